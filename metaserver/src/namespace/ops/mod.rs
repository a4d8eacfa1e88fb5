//! The POSIX operations, one module per concern. Each checks first and writes after; in
//! a replay (`Ctx::replaying`) the checks that depend on the origin's state are skipped
//! (`Ctx::origin_check`) and concurrent changes are met as `conflict` says.

pub(crate) mod attrs;
pub(crate) mod content;
pub(crate) mod copy;
pub(crate) mod entries;
pub(crate) mod volumes;
pub(crate) mod xattrs;
