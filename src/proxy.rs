//! `meridian proxy`: a TCP fault proxy for the links between regions. A link is a set of
//! forwards (listen address -> target), typically every server of one region as seen from
//! another, that share one state: a one-way delay added to each direction, and cut or
//! healed, all changed at run time through a small gRPC control service (`meridian admin
//! link …`, tests, or `meridian dev`, which runs its links in-process).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;
use meridian_proto::pb::proxy::proxy_control_server::{ProxyControl, ProxyControlServer};
use meridian_proto::pb::proxy::{Forward, LinkStatus, LinkStatusRequest, SetLinkRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tonic::{Request, Response, Status};

/// The longest delay a link takes (a minute: longer is a cut, which says so).
const MAX_DELAY_MS: u32 = 60_000;

/// Options of `meridian proxy`.
#[derive(Args)]
pub struct ProxyArgs {
    /// Where clients connect (port 0 picks one; printed). With --target.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: String,
    /// Where connections are forwarded (one target; or use --forward).
    #[arg(long, required_unless_present = "forward")]
    pub target: Option<String>,
    /// A forward of this link, LISTEN=TARGET (repeatable): every forward shares the delay
    /// and the cut.
    #[arg(long, value_parser = crate::parse_pair)]
    pub forward: Vec<(String, String)>,
    /// Control service address (port 0 picks one; printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub control: String,
    /// Initial one-way delay, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u32,
    /// The link's name, shown by `admin link`.
    #[arg(long, default_value = "link")]
    pub name: String,
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct LinkState {
    delay: Duration,
    cut: bool,
}

struct Link {
    name: String,
    forwards: Vec<(String, String)>,
    state: watch::Sender<LinkState>,
    connections: AtomicU64,
    open: AtomicU64,
    bytes: AtomicU64,
}

impl Link {
    fn status(&self) -> LinkStatus {
        let s = *self.state.borrow();
        let (listen, target) = self.forwards.first().cloned().unwrap_or_default();
        LinkStatus {
            name: self.name.clone(),
            forwards: self
                .forwards
                .iter()
                .map(|(listen, target)| Forward {
                    listen: listen.clone(),
                    target: target.clone(),
                })
                .collect(),
            listen,
            target,
            delay_ms: s.delay.as_millis() as u32,
            cut: s.cut,
            connections_total: self.connections.load(Ordering::Relaxed),
            connections_open: self.open.load(Ordering::Relaxed),
            bytes_forwarded: self.bytes.load(Ordering::Relaxed),
        }
    }
}

/// Copies `from` to `to`, each chunk released `delay` after it arrived (order kept), until
/// either side closes or the link is cut.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Arc<Link>,
) {
    let (tx, mut rx) = mpsc::channel::<(Instant, Vec<u8>)>(1024);
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 64 << 10];
        loop {
            match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).await.is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut state = link.state.subscribe();
    loop {
        tokio::select! {
            item = rx.recv() => {
                let Some((arrived, data)) = item else { break };
                let delay = state.borrow().delay;
                tokio::time::sleep_until(arrived + delay).await;
                if state.borrow().cut || to.write_all(&data).await.is_err() {
                    break;
                }
                link.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            changed = state.changed() => {
                if changed.is_err() || state.borrow().cut {
                    break;
                }
            }
        }
    }
    reader.abort();
    let _ = to.shutdown().await;
}

async fn serve_connection(client: TcpStream, target: Arc<str>, link: Arc<Link>) {
    link.connections.fetch_add(1, Ordering::Relaxed);
    if link.state.borrow().cut {
        return; // dropped: the peer sees the connection close at once
    }
    let Ok(upstream) = TcpStream::connect(&*target).await else {
        return;
    };
    let _ = (client.set_nodelay(true), upstream.set_nodelay(true));
    link.open.fetch_add(1, Ordering::Relaxed);
    let (cr, cw) = client.into_split();
    let (ur, uw) = upstream.into_split();
    let a = tokio::spawn(pump(cr, uw, link.clone()));
    let b = tokio::spawn(pump(ur, cw, link.clone()));
    // When one direction ends (close or cut), end the other too.
    tokio::select! {
        _ = a => {}
        _ = b => {}
    }
    link.open.fetch_sub(1, Ordering::Relaxed);
}

struct Control(Arc<Link>);

#[tonic::async_trait]
impl ProxyControl for Control {
    async fn set(&self, request: Request<SetLinkRequest>) -> Result<Response<LinkStatus>, Status> {
        let r = request.into_inner();
        if let Some(ms) = r.delay_ms
            && ms > MAX_DELAY_MS
        {
            return Err(Status::invalid_argument(format!(
                "a delay of {ms} ms: at most {MAX_DELAY_MS} ms"
            )));
        }
        self.0.state.send_modify(|s| {
            if let Some(ms) = r.delay_ms {
                s.delay = Duration::from_millis(u64::from(ms));
            }
            if let Some(cut) = r.cut {
                s.cut = cut;
            }
        });
        tracing::info!(state = ?*self.0.state.borrow(), "link changed");
        Ok(Response::new(self.0.status()))
    }

    async fn status(
        &self,
        _request: Request<LinkStatusRequest>,
    ) -> Result<Response<LinkStatus>, Status> {
        Ok(Response::new(self.0.status()))
    }
}

/// Binds every `LISTEN=TARGET` forward (port 0 picks one).
pub async fn bind_forwards(specs: &[(String, String)]) -> Result<Vec<(TcpListener, String)>> {
    let mut out = Vec::new();
    for (listen, target) in specs {
        let l = TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        out.push((l, target.clone()));
    }
    Ok(out)
}

/// Serves one link, its forwards bound already, with its control service on `control`,
/// until `shutdown`.
pub async fn serve_link(
    name: &str,
    forwards: Vec<(TcpListener, String)>,
    delay_ms: u32,
    control: TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let pairs = forwards
        .iter()
        .map(|(l, t)| Ok((l.local_addr()?.to_string(), t.clone())))
        .collect::<Result<Vec<_>>>()?;
    let link = Arc::new(Link {
        name: name.to_string(),
        forwards: pairs,
        state: watch::channel(LinkState {
            delay: Duration::from_millis(u64::from(delay_ms)),
            cut: false,
        })
        .0,
        connections: AtomicU64::new(0),
        open: AtomicU64::new(0),
        bytes: AtomicU64::new(0),
    });
    let accepts: Vec<_> = forwards
        .into_iter()
        .map(|(listener, target)| {
            let (link, target) = (link.clone(), Arc::<str>::from(target));
            tokio::spawn(async move {
                while let Ok((client, _)) = listener.accept().await {
                    tokio::spawn(serve_connection(client, target.clone(), link.clone()));
                }
            })
        })
        .collect();
    let served = tonic::transport::Server::builder()
        .add_service(ProxyControlServer::new(Control(link)))
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(control),
            shutdown,
        )
        .await;
    for a in accepts {
        a.abort();
    }
    Ok(served?)
}

/// Runs the proxy until `shutdown`. Prints `meridian proxy listening on <addr> control
/// <addr>` (the first forward's address) and one `forward <listen> -> <target>` line each.
pub async fn run(
    args: ProxyArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    anyhow::ensure!(
        args.delay_ms <= MAX_DELAY_MS,
        "--delay-ms {}: at most {MAX_DELAY_MS}",
        args.delay_ms
    );
    let mut specs = args.forward;
    if let Some(target) = &args.target {
        specs.insert(0, (args.listen.clone(), target.clone()));
    }
    let forwards = bind_forwards(&specs).await?;
    let control = TcpListener::bind(&args.control)
        .await
        .with_context(|| format!("cannot listen on {}", args.control))?;
    let control_addr = control.local_addr()?;
    for (l, t) in &forwards {
        println!("forward {} -> {t}", l.local_addr()?);
    }
    let first = forwards[0].0.local_addr()?;
    println!("meridian proxy listening on {first} control {control_addr}");
    tracing::info!(name = %args.name, forwards = forwards.len(), %control_addr, "fault proxy serving");
    serve_link(&args.name, forwards, args.delay_ms, control, shutdown).await
}
