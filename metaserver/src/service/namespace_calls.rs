//! The namespace's calls: mutations (forwarded to the leader or the volume's home when
//! they must be), queries, and the change feed mounts watch; each checks the caller's
//! volume access token first.

use super::*;

impl MetaApi {
    pub(super) async fn handle_mutate(
        &self,
        request: Request<MutateRequest>,
    ) -> Result<Response<MutateResponse>, Status> {
        metrics::counter!("meridian_meta_mutations_total").increment(1);
        let op: Op = decode(&request.get_ref().op, "operation")?;
        // What the checks below read holds what was answered early (a commit of file
        // data reads nothing that an early answer changes, unless a token is checked).
        let restricted = crate::tokens::restricted(&request)?;
        if !matches!(op, Op::CommitExtents { .. }) || restricted.is_some() {
            self.settle_early().await;
        }
        if let Some((claims, keys)) = &restricted
            && let Checked::Missing(ino) =
                self.check_op(claims, keys, &op, &request.get_ref().caps)?
        {
            // Not held here: decided where it is (the home region, else the leader).
            let req = request.get_ref();
            if req.from_region == 0
                && self.volume_home_elsewhere(req.volume)?.is_some()
                && let Forward::Answered(r) = self
                    .forward_home(&op, req.clone(), crate::tokens::token_header(&request))
                    .await?
            {
                return Ok(r);
            }
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            let outcome: Result<Reply, NsError> = Err(NsError::NotFound(format!("inode {ino}")));
            return Ok(Response::new(MutateResponse {
                outcome: json(&outcome),
                log_index: 0,
                dirs: Bytes::new(),
                change_seq: 0,
            }));
        }
        if let Op::CloneVolume {
            source,
            name,
            read_only,
        } = &op
        {
            // A copy is made here, in steps, whatever regions its source lives in.
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            let outcome =
                crate::copy::copy_volume(self.0.clone(), source, name, *read_only).await?;
            return Ok(Response::new(MutateResponse {
                outcome: json(&outcome),
                log_index: 0,
                dirs: Bytes::new(),
                change_seq: 0,
            }));
        }
        if let Op::DeleteVolume { name } = &op
            && self
                .read(|r| r.volume(name))
                .is_ok_and(|v| v.is_ok_and(|v| v.copying.is_some()))
        {
            // A copy still being made goes in steps, as one whose maker went away.
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            let req = request.get_ref();
            let id = (req.client_id != 0).then_some((req.client_id, req.request_id));
            if let Some(outcome) = crate::copy::delete_unfinished(&self.0, name, id).await? {
                return Ok(Response::new(MutateResponse {
                    outcome: json(&outcome),
                    log_index: 0,
                    dirs: Bytes::new(),
                    change_seq: 0,
                }));
            }
        }
        let req = request.get_ref();
        let forwarded = req.from_region != 0;
        // A volume whose home is another region: the change is decided there.
        if let Some(home) = self.home_elsewhere_of(&op, req.volume)? {
            // Forwarded here by a region that hears the home through this one (a chain),
            // or that took this one for the home (it is moving): passed on, a bounded
            // number of times; then the forwarding region tries again.
            if forwarded
                && (req.hops >= crate::home::MAX_HOPS || req.from_region == u32::from(home.0))
            {
                return Err(Status::unavailable(format!(
                    "region {} is not the home of this volume (region {} is, as far as it knows)",
                    self.shared.region.0, home.0
                )));
            }
            if let Forward::Answered(r) = self
                .forward_home(&op, req.clone(), crate::tokens::token_header(&request))
                .await?
            {
                return Ok(r);
            }
            // This region became the home meanwhile: the change is made here.
        }
        let id = (req.client_id != 0).then_some((req.client_id, req.request_id));
        let dirs = op.dirs_changed();
        // Another client's leased directory: recalled first (on the leader).
        let (touched, leased) = self.touched_leased(req.client_id, &op)?;
        if leased {
            if !self.is_leader() {
                let (mut leader, addr) = self.leader_client(&request)?;
                return naming(leader.mutate(MetaNode::forward(request)).await, &addr);
            }
            self.await_leases(req.client_id, &touched).await?;
        }
        // Bounds decided here and carried in the command (`NsReader::bounded`): every
        // member applies the same, whatever its version.
        let op = match self.read(|r| r.bounded(op))? {
            Ok(op) => op,
            Err(e) => {
                let outcome: Result<Reply, NsError> = Err(e);
                return Ok(Response::new(MutateResponse {
                    outcome: json(&outcome),
                    log_index: 0,
                    dirs: Bytes::new(),
                    change_seq: 0,
                }));
            }
        };
        let mut cmd = self.stamp(op.clone(), id);
        cmd.lease = req.lease && id.is_some();
        // Answered early: a change made here that changes no directory (whose attributes
        // the answer after the commit carries) and succeeds.
        let sink = request
            .extensions()
            .get::<crate::service::EarlySink>()
            .filter(|_| dirs.is_empty() && !forwarded);
        let early = |done: &RaftResponse, index| match done {
            RaftResponse::Ns(outcome @ Ok(_)) => Some(call_reply::Reply::Mutate(MutateResponse {
                outcome: json(outcome),
                log_index: index,
                dirs: Bytes::new(),
                change_seq: 0,
            })),
            _ => None,
        };
        let key = cmd.request;
        match self
            .propose_early(RaftRequest::Ns(cmd), key, sink, early)
            .await
        {
            Ok((RaftResponse::Ns(outcome), index)) => {
                if matches!(outcome, Err(NsError::ReadOnly(_)))
                    && self.home_elsewhere(&op)?.is_some()
                {
                    // The home moved away as this change was made: the new home decides.
                    if forwarded {
                        return Err(Status::unavailable("the volume's home moved: try again"));
                    }
                    if let Forward::Answered(r) = self
                        .forward_home(
                            &op,
                            request.get_ref().clone(),
                            crate::tokens::token_header(&request),
                        )
                        .await?
                    {
                        return Ok(r);
                    }
                }
                // The directories as they are now (this member applied the operation
                // before answering): the client's kernel asks for them next otherwise.
                // The operation applied: a failure to read them only leaves them out.
                let dirs: Vec<Attr> = match outcome {
                    Ok(_) if !dirs.is_empty() => self
                        .read(|r| {
                            dirs.iter()
                                .filter_map(|&ino| match r.query(&Query::GetAttr { ino }) {
                                    Ok(QueryReply::Attr(a)) => Some(a),
                                    _ => None,
                                })
                                .collect()
                        })
                        .unwrap_or_else(|e| {
                            warn!(error = %e, "could not read the changed directories back");
                            Vec::new()
                        }),
                    _ => Vec::new(),
                };
                // For a region that forwarded it: where this region's change log ends
                // with the change in it.
                let change_seq = if forwarded {
                    self.db
                        .begin_read()
                        .ok()
                        .and_then(|tx| tx.open_table(crate::namespace::tables::CHANGELOG).ok())
                        .and_then(|t| {
                            redb::ReadableTable::last(&t)
                                .ok()
                                .flatten()
                                .map(|(k, _)| k.value())
                        })
                        .unwrap_or(0)
                } else {
                    0
                };
                Ok(Response::new(MutateResponse {
                    outcome: json(&outcome),
                    log_index: index,
                    dirs: if dirs.is_empty() {
                        Bytes::new()
                    } else {
                        json(&dirs)
                    },
                    change_seq,
                }))
            }
            Ok((other, _)) => Err(Status::from(MetaError::Store(format!(
                "unexpected apply result {other:?}"
            )))),
            Err(Some(status)) => Err(status),
            Err(None) => {
                let (mut leader, addr) = self.leader_client(&request)?;
                naming(leader.mutate(MetaNode::forward(request)).await, &addr)
            }
        }
    }

    pub(super) async fn handle_query(
        &self,
        request: Request<QueryRequest>,
    ) -> Result<Response<QueryResponse>, Status> {
        metrics::counter!("meridian_meta_queries_total").increment(1);
        let query: Query = decode(&request.get_ref().query, "query")?;
        if !request.get_ref().stale {
            // A client told its change committed reads it here.
            self.settle_early().await;
        }
        let restricted = crate::tokens::restricted(&request)?;
        // Refused early when this member can tell (before any lease is recalled for it).
        // An inode's volume never changes: a grant found now holds for the answer too.
        let early = match &restricted {
            Some((claims, _)) => Some(self.check_query(claims, &query)?),
            None => None,
        };
        let client = request.get_ref().client;
        let (linearizable, volume) = (request.get_ref().linearizable, request.get_ref().volume);
        if linearizable && self.volume_home_elsewhere(volume)?.is_some() {
            if request.get_ref().from_region != 0 {
                // Its home is moving (or this region has not learnt where yet).
                return Err(Status::unavailable(format!(
                    "region {} is not the home of volume {volume}",
                    self.shared.region.0
                )));
            }
            // Answered as of now by the home (a read index there).
            if let Some(answer) = self
                .query_at_home(
                    volume,
                    request.get_ref().clone(),
                    crate::tokens::token_header(&request),
                )
                .await?
            {
                return Ok(answer);
            }
        }
        if !request.get_ref().stale {
            let leased = self.query_leased(client, &query)?;
            if !leased.is_empty() {
                // Another client's leased directory: recalled first, by the leader.
                if !self.is_leader() {
                    let (mut leader, addr) = self.leader_client(&request)?;
                    return naming(leader.query(MetaNode::forward(request)).await, &addr);
                }
                self.await_leases(client, &leased).await?;
            }
        }
        if !request.get_ref().stale
            && !self.lease_valid().await
            && let Err(e) = self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await
        {
            if e.forward_to_leader().is_none() {
                return Err(unavailable(e));
            }
            let (mut leader, addr) = self.leader_client(&request)?;
            return naming(leader.query(MetaNode::forward(request)).await, &addr);
        }
        let (outcome, caps) = match &restricted {
            // fsck's reads (a page of inodes, or every directory entry) run beside the
            // runtime's workers: they may take seconds on a large region.
            None if matches!(query, Query::Check { .. } | Query::Links { .. }) => {
                let db = self.db.clone();
                let outcome = tokio::task::spawn_blocking(move || {
                    let tx = db.begin_read().map_err(|e| Status::from(store(e)))?;
                    Ok::<_, Status>(NsReader::new(&tx).query(&query))
                })
                .await
                .map_err(|e| Status::internal(e.to_string()))??;
                (outcome, Bytes::new())
            }
            None => (self.read(|r| r.query(&query))?, Bytes::new()),
            Some((claims, keys)) => {
                let checked = match early {
                    Some(granted @ Checked::Granted(_)) => granted,
                    // Not held here then: asked again now that this member is current.
                    _ => self.check_query(claims, &query)?,
                };
                match checked {
                    Checked::Missing(ino) => {
                        (Err(NsError::NotFound(format!("inode {ino}"))), Bytes::new())
                    }
                    Checked::Granted(volume) => {
                        let outcome =
                            crate::tokens::filter_reply(claims, self.read(|r| r.query(&query))?);
                        let caps = volume
                            .map(|v| crate::tokens::caps(keys, v, &outcome))
                            .unwrap_or_default();
                        (outcome, caps)
                    }
                }
            }
        };
        Ok(Response::new(QueryResponse {
            outcome: json(&outcome),
            caps,
        }))
    }

    pub(super) async fn handle_watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<WatchResponse>, Status> {
        if let Some((claims, _)) = crate::tokens::restricted(&request)? {
            self.check_volume(&claims, request.get_ref().volume)?;
        }
        // Only a leader within its lease answers: a member cut off from the others would
        // answer "nothing changed" while the others go on changing things.
        if !self.lease_valid().await {
            let (mut leader, addr) = self.leader_client(&request)?;
            return naming(leader.watch(MetaNode::forward(request)).await, &addr);
        }
        let r = request.into_inner();
        let deadline = Instant::now() + Duration::from_millis(u64::from(r.wait_ms).min(10_000));
        let mut applied = self.shared.applied.subscribe();
        let mut recalled = self.recalls.subscribe();
        let mut from = r.from;
        let mut gathered = false;
        let _watching = self.feed_load.watching();
        loop {
            let tx = self.db.begin_read().map_err(|e| Status::from(store(e)))?;
            let answer = crate::watch::changes(&tx, r.volume, from, r.client)?;
            // Only what the applied state still leases to the watcher: a recall whose
            // waiter went away (or whose lease ended) is dropped, not repeated.
            let recall: Vec<u64> = if r.client == 0 {
                Vec::new()
            } else {
                let pending = self.recalls.of(r.client);
                let (live, stale): (Vec<_>, Vec<_>) = pending.into_iter().partition(|d| {
                    matches!(
                        crate::namespace::lease::leaseholder(&tx, *d),
                        Ok(Some(h)) if h == r.client
                    )
                });
                if !stale.is_empty() {
                    self.recalls.forget(&stale);
                }
                live.iter().map(|d| d.0).collect()
            };
            drop(tx);
            let now = Instant::now();
            let gather = if !answer.touched.changes.is_empty()
                && recall.is_empty()
                && !answer.gap
                && r.from != 0
                && !gathered
                && now < deadline
            {
                self.feed_load.gathering(answer.head)
            } else {
                None
            };
            if let Some(gather) = gather {
                // Changes come in runs (a loop of creates, an unpacked archive): while
                // the log grows fast the watcher gets a run's first milliseconds in one
                // answer rather than an answer, and a poll, per change (with ten idle
                // mounts of a volume, creates in it ran at 40% of their rate). What
                // another client changed reaches its kernel that much later at most; a
                // recall still answers at once.
                gathered = true;
                let _ = tokio::time::timeout(gather.min(deadline - now), recalled.changed()).await;
                continue;
            }
            if !answer.touched.changes.is_empty()
                || answer.gap
                || r.from == 0
                || !recall.is_empty()
                || now >= deadline
            {
                return Ok(Response::new(WatchResponse {
                    touched: json(&answer.touched),
                    next: answer.next,
                    gap: answer.gap,
                    recall,
                }));
            }
            // Records of other volumes or of the watcher only, or none: wait for the next
            // applied entry, or a recall.
            from = answer.next;
            let _ = tokio::time::timeout(deadline - now, async {
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = recalled.changed() => {}
                }
            })
            .await;
        }
    }
}
