//! Volume access tokens on the metaservers (docs/adr/0016): what a token holder may read
//! and change, decided from this member's namespace, and the block capabilities its
//! extents queries carry.
//!
//! An inode's volume never changes and inode numbers are never reused, so a member that
//! holds the inode can decide for it whatever its lag. One that does not hold it yet
//! cannot: the call goes to the leader (or the volume's home region) with the token, and
//! is decided there.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use meridian_proto::InodeId;
use meridian_proto::ns::{NsError, Op, Query, QueryReply, Queued};
use meridian_proto::token::{CAP_LEN, Claims, TokenKeys};
use redb::ReadableDatabase;
use tonic::{Request, Status};

use crate::namespace::NsReader;
use crate::service::MetaNode;

/// What a check found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Checked {
    /// The token grants it; the volume of the inodes, when the call names any.
    Granted(Option<u32>),
    /// This member does not hold the inode: a member that does must decide.
    Missing(InodeId),
}

fn denied(claims: &Claims, what: impl std::fmt::Display) -> Status {
    Status::permission_denied(format!(
        "the token of {:?} does not grant {what}",
        claims.subject
    ))
}

/// The volumes `claims` grants that exist in `r`, by id: their names, and whether each
/// may be written.
fn granted(r: &NsReader<'_>, claims: &Claims) -> HashMap<u32, (String, bool)> {
    claims
        .volumes
        .iter()
        .filter_map(|g| {
            r.volume(&g.volume)
                .ok()
                .map(|v| (v.id, (g.volume.clone(), g.write)))
        })
        .collect()
}

impl MetaNode {
    /// Whether `claims` may read (or, with `write`, change) inodes `inos`. `made` names
    /// inodes not applied yet whose volume is known (a write-back's own creates).
    pub(crate) fn check_inodes(
        &self,
        claims: &Claims,
        inos: &[InodeId],
        write: bool,
        made: &HashMap<InodeId, u32>,
    ) -> Result<Checked, Status> {
        // One read of the grants and the inodes.
        self.read(|r| {
            let granted = granted(r, claims);
            let mut volume = None;
            for &ino in inos {
                let v = match made.get(&ino) {
                    Some(v) => *v,
                    None => match r.getattr(ino) {
                        Ok(attr) => attr.volume,
                        Err(NsError::NotFound(_)) => return Ok(Checked::Missing(ino)),
                        Err(e) => return Err(Status::from(crate::error::MetaError::Ns(e))),
                    },
                };
                match granted.get(&v) {
                    Some((_, w)) if *w || !write => volume = Some(v),
                    Some((name, _)) => {
                        return Err(denied(
                            claims,
                            format_args!("changes to volume {name:?} (read only)"),
                        ));
                    }
                    None => {
                        return Err(denied(claims, format_args!("inode {ino} (volume {v})")));
                    }
                }
            }
            Ok(Checked::Granted(volume))
        })?
    }

    /// Whether `claims` may make `op`, adding to its file only blocks that `caps` (the
    /// request's capabilities, checked with `keys`) show it may read in the file's volume.
    pub(crate) fn check_op(
        &self,
        claims: &Claims,
        keys: &TokenKeys,
        op: &Op,
        caps: &[u8],
    ) -> Result<Checked, Status> {
        if op.is_volume_level() {
            return Err(denied(
                claims,
                "changes to volumes themselves (an admin certificate makes those)",
            ));
        }
        let write = !op.is_read_side_effect();
        let checked = self.check_inodes(claims, &op.inodes(), write, &HashMap::new())?;
        if let Checked::Granted(Some(volume)) = checked {
            check_blocks(claims, keys, op, volume, caps)?;
        }
        Ok(checked)
    }

    /// Whether `claims` may make every change of a write-back of `client`, in order. A
    /// create of an inode that does not exist yet, in a directory leased to `client`, puts
    /// that inode in its parent's volume for the changes after it; nothing else does (an
    /// inode number a change merely carries says nothing of its volume).
    pub(crate) fn check_write_back(
        &self,
        claims: &Claims,
        keys: &TokenKeys,
        client: u64,
        queued: &[Queued],
        reserve: u32,
        caps: &[u8],
    ) -> Result<Checked, Status> {
        let mut made = HashMap::new();
        for q in queued {
            if q.op.is_volume_level() {
                return Err(denied(claims, "changes to volumes themselves"));
            }
            let write = !q.op.is_read_side_effect();
            match self.check_inodes(claims, &q.op.inodes(), write, &made)? {
                Checked::Granted(Some(v)) => {
                    check_blocks(claims, keys, &q.op, v, caps)?;
                    if let (Op::Mknod { parent, .. } | Op::Symlink { parent, .. }, Some(ino)) =
                        (&q.op, q.ino)
                        && self.creates_here(client, *parent, ino)?
                    {
                        made.insert(ino, v);
                    }
                }
                Checked::Granted(None) => {}
                missing => return Ok(missing),
            }
        }
        if reserve > 0 && !claims.volumes.iter().any(|g| g.write) {
            return Err(denied(
                claims,
                "inode numbers (it grants no volume to write)",
            ));
        }
        Ok(Checked::Granted(None))
    }

    /// Whether inode `ino` is one `client` may be creating in `parent`: it does not exist,
    /// and `parent` is leased to `client`.
    fn creates_here(&self, client: u64, parent: InodeId, ino: InodeId) -> Result<bool, Status> {
        let absent = matches!(self.read(|r| r.getattr(ino))?, Err(NsError::NotFound(_)));
        let tx = self
            .db
            .begin_read()
            .map_err(|e| Status::from(crate::error::store(e)))?;
        let leased = crate::namespace::lease::leaseholder(&tx, parent)
            .map_err(|e| Status::from(crate::error::MetaError::Ns(e)))?;
        Ok(absent && leased == Some(client))
    }

    /// Whether `claims` may make `query`.
    pub(crate) fn check_query(&self, claims: &Claims, query: &Query) -> Result<Checked, Status> {
        if let Some(ino) = query.inode() {
            return self.check_inodes(claims, &[ino], false, &HashMap::new());
        }
        match query {
            Query::Volume { name } if claims.grant(name).is_some() => Ok(Checked::Granted(None)),
            Query::Volume { name } => Err(denied(claims, format_args!("volume {name:?}"))),
            // Answered, then cut to the volumes granted.
            Query::Volumes => Ok(Checked::Granted(None)),
            _ => Err(denied(
                claims,
                "the region's bookkeeping (conflicts, change log, block references, checks)",
            )),
        }
    }

    /// Whether `claims` may read volume `volume` (a watch of it).
    pub(crate) fn check_volume(&self, claims: &Claims, volume: u32) -> Result<(), Status> {
        match self.read(|r| granted(r, claims).contains_key(&volume))? {
            true => Ok(()),
            false => Err(denied(claims, format_args!("volume {volume}"))),
        }
    }
}

/// Refuses `op` unless `caps` holds, for every block it adds to its file, a capability
/// for that block in `volume`: a token holder references only blocks it put, or was shown,
/// in the volume (a block id learnt elsewhere does not make its bytes readable).
fn check_blocks(
    claims: &Claims,
    keys: &TokenKeys,
    op: &Op,
    volume: u32,
    caps: &[u8],
) -> Result<(), Status> {
    let held: Vec<&[u8]> = caps.chunks_exact(36 + CAP_LEN).collect();
    for block in op.blocks_added() {
        // A block the change carries staged is shown by its bytes, which hash to it.
        if op
            .staged()
            .iter()
            .any(|b| b.id == block && meridian_proto::BlockId::of(&b.data) == block)
        {
            continue;
        }
        let shown = held.iter().any(|r| {
            r[..32] == *block.as_bytes()
                && r[32..36] == volume.to_le_bytes()
                && keys.check_cap(&block, volume, &r[36..])
        });
        if !shown {
            return Err(denied(
                claims,
                format_args!(
                    "block {block} in volume {volume} (a token holder adds only blocks it put or read there)"
                ),
            ));
        }
    }
    Ok(())
}

/// `outcome` cut to what `claims` may see (the volumes listed).
pub(crate) fn filter_reply(
    claims: &Claims,
    outcome: Result<QueryReply, NsError>,
) -> Result<QueryReply, NsError> {
    match outcome {
        Ok(QueryReply::Volumes(vs)) => Ok(QueryReply::Volumes(
            vs.into_iter()
                .filter(|v| claims.grant(&v.name).is_some())
                .collect(),
        )),
        other => other,
    }
}

/// The capabilities for the blocks of `outcome`'s extents, in volume `volume`.
pub(crate) fn caps(keys: &TokenKeys, volume: u32, outcome: &Result<QueryReply, NsError>) -> Bytes {
    let extents = match outcome {
        Ok(QueryReply::View { extents, .. }) | Ok(QueryReply::Extents(extents)) => extents,
        _ => return Bytes::new(),
    };
    let mut out = Vec::with_capacity(extents.len() * (36 + CAP_LEN));
    let mut seen = std::collections::HashSet::new();
    for e in extents {
        if seen.insert(e.block) {
            out.extend_from_slice(e.block.as_bytes());
            out.extend_from_slice(&volume.to_le_bytes());
            out.extend_from_slice(&keys.cap(&e.block, volume));
        }
    }
    Bytes::from(out)
}

/// The token header of `from`, to send on with a call made for it.
pub(crate) fn token_header<U>(
    from: &Request<U>,
) -> Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>> {
    from.metadata().get(meridian_proto::token::HEADER).cloned()
}

/// A caller whose calls are limited to its token's volumes, with the keys to make
/// capabilities for it.
pub(crate) type Restricted = Option<(Arc<Claims>, Arc<TokenKeys>)>;

/// Who sent `request`: `None` for an unrestricted caller.
pub(crate) fn restricted<T>(request: &Request<T>) -> Result<Restricted, Status> {
    match meridian_proto::token::caller(request)? {
        meridian_proto::token::Caller::Unrestricted => Ok(None),
        meridian_proto::token::Caller::Token(c) => {
            Ok(meridian_proto::token::keys().map(|k| (c, k)))
        }
    }
}
