//! Volume access tokens on a chunkserver (docs/adr/0016): a token holder puts blocks only
//! for a volume it may write, and gets a block only with a capability, from the
//! metaservers or from the put that stored it, for a volume its token grants.

use meridian_proto::BlockId;
use meridian_proto::token::{Claims, TokenKeys};
use tonic::Status;

use crate::service::ChunkNode;

impl ChunkNode {
    /// Refuses unless `claims` grants volume `volume` (for writing, with `write`).
    pub(crate) async fn check_grant(
        &self,
        claims: &Claims,
        volume: u32,
        write: bool,
        block: &BlockId,
    ) -> Result<(), Status> {
        let refused = |why: String| {
            metrics::counter!("meridian_chunk_token_refusals_total").increment(1);
            Status::permission_denied(format!(
                "block {block}: the token of {:?} {why}",
                claims.subject
            ))
        };
        if volume == 0 {
            return Err(refused("must name the block's volume".into()));
        }
        let name = self.residency.name_of(volume).await?;
        match name.as_deref().and_then(|n| claims.grant(n)) {
            Some(g) if g.write || !write => Ok(()),
            Some(g) => Err(refused(format!("grants volume {:?} read only", g.volume))),
            None => Err(refused(format!("does not grant volume {volume}"))),
        }
    }

    /// Refuses a get of `block` unless `cap` is a capability for it in `volume`, which
    /// `claims` grants.
    pub(crate) async fn check_get(
        &self,
        claims: &Claims,
        keys: &TokenKeys,
        block: &BlockId,
        volume: u32,
        cap: &[u8],
    ) -> Result<(), Status> {
        self.check_grant(claims, volume, false, block).await?;
        if !keys.check_cap(block, volume, cap) {
            metrics::counter!("meridian_chunk_token_refusals_total").increment(1);
            return Err(Status::permission_denied(format!(
                "block {block}: no capability for it in volume {volume} (a token holder reads \
                 the blocks the metaservers name to it for its volumes)"
            )));
        }
        Ok(())
    }
}
