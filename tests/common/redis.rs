//! A real `redis-server` for the tests, on a free port of 127.0.0.1, killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::{READY, free_tcp_port, run};

/// Polls `f` every 20 ms until it returns `Some`, or `None` at the deadline.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` on 127.0.0.1, killed on drop.
pub struct Redis {
    child: Option<Child>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Redis {
    /// Starts one on a free port (retrying on the rare collision).
    pub fn start(dir: &Path) -> Redis {
        Redis::start_with(dir, &[])
    }

    /// Starts one with more `redis-server` arguments (e.g. `--maxclients N`).
    pub fn start_with(dir: &Path, extra: &[&str]) -> Redis {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        for _ in 0..5 {
            if let Some(r) = Redis::start_on(free_tcp_port(), dir, &extra) {
                return r;
            }
        }
        panic!("redis-server did not start on any of several free ports");
    }

    /// Starts one on `port`; `None` if it exits (the port was taken).
    fn start_on(port: u16, dir: &Path, extra: &[String]) -> Option<Redis> {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--dir"])
            .arg(dir)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server (apt-get install redis-server)");
        let mut r = Redis {
            child: Some(child),
            port,
            dir: dir.to_path_buf(),
            extra: extra.to_vec(),
        };
        let up = poll(READY, || {
            if r.child.as_mut()?.try_wait().expect("try_wait").is_some() {
                return Some(false);
            }
            (redis_cli(port, &["PING"]) == "PONG").then_some(true)
        });
        match up {
            Some(true) => Some(r),
            Some(false) => None,
            None => panic!("redis-server on port {port} did not answer PING within {READY:?}"),
        }
    }

    /// Kills it (its port is free again once this returns).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let again =
            Redis::start_on(self.port, &self.dir, &self.extra).expect("restart redis on its port");
        *self = again;
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What `redis-cli -p PORT ARGS...` printed (trimmed), talking to Redis directly.
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-p", &port.to_string()]).args(args);
    run(cmd, Duration::from_secs(5)).stdout.trim().to_string()
}
