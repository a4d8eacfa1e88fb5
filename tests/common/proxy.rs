//! The fault proxy (`meridian proxy`) between regions.

use super::*;

/// A `meridian proxy` process (the fault proxy); killed on drop.
pub struct Proxy {
    child: Child,
    pub listen: String,
    pub control: String,
    pub forwards: Vec<String>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Proxy {
    /// Starts a proxy to `target`, listening on `listen` (port 0: any), logging under `dir`.
    pub fn start(dir: &Path, name: &str, listen: &str, target: &str) -> Result<Proxy> {
        Proxy::start_forwards(dir, name, &[(listen.to_string(), target.to_string())])
    }

    /// Starts one link of many `(listen, target)` forwards sharing one delay and cut;
    /// `forwards` holds the bound listen addresses, in order.
    pub fn start_forwards(dir: &Path, name: &str, forwards: &[(String, String)]) -> Result<Proxy> {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log)?;
        let child = Command::new(MERIDIAN)
            .args(["proxy", "--name", name])
            .args(
                forwards
                    .iter()
                    .flat_map(|(l, t)| ["--forward".to_string(), format!("{l}={t}")]),
            )
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()?;
        let mut p = Proxy {
            child,
            listen: String::new(),
            control: String::new(),
            forwards: Vec::new(),
        };
        // A proxy that could not bind exits: say why at once rather than wait.
        let text = wait_for(Duration::from_secs(20), "the proxy to listen", || {
            let text = fs::read_to_string(&log).ok()?;
            if text.contains("meridian proxy listening on ") {
                return Some(Ok(text));
            }
            match p.child.try_wait() {
                Ok(Some(status)) => Some(Err(anyhow::anyhow!(
                    "the proxy exited ({status}) before listening: {text}"
                ))),
                _ => None,
            }
        })??;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            if line.starts_with("meridian proxy listening on ") {
                p.listen = words[4].to_string();
                p.control = words[6].to_string();
            } else if line.starts_with("forward ") {
                p.forwards.push(words[1].to_string());
            }
        }
        Ok(p)
    }

    /// Cuts (`true`) or heals (`false`) the link, through the admin CLI.
    pub fn set_delay(&self, ms: u32) -> Result<()> {
        let ms = ms.to_string();
        let out = Command::new(MERIDIAN)
            .args(["admin", "link", "--proxy", &self.control, "--delay-ms", &ms])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "admin link --delay-ms {ms}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    pub fn set_cut(&self, cut: bool) -> Result<()> {
        let flag = if cut { "--cut" } else { "--heal" };
        let out = Command::new(MERIDIAN)
            .args(["admin", "link", "--proxy", &self.control, flag])
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "admin link {flag}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }
}
