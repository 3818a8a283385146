//! A `nats-server -js` of a test's or benchmark's own: a free loopback port, a temp store,
//! stopped and reaped when dropped. Shared by `tests/api/cluster.rs` and `benches/cluster.rs`.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// A fresh JetStream server, or `None` when `nats-server` is not installed (and not
    /// required by `SWITCHYARD_REQUIRE_NATS`, which `.ci/run` sets).
    #[allow(dead_code)]
    pub fn start() -> Option<Nats> {
        let found = Command::new("nats-server")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            assert!(
                std::env::var("SWITCHYARD_REQUIRE_NATS").is_err(),
                "nats-server is required (apt-get install nats-server)"
            );
            eprintln!("skipped: nats-server is not installed");
            return None;
        }
        Some(Nats::launch())
    }

    /// A fresh JetStream server; panics when there is none to start.
    pub fn launch() -> Nats {
        let dir = tempfile::tempdir().expect("nats temp dir");
        let port = free_port();
        let child = Command::new("nats-server")
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (apt-get install nats-server)");
        // From here on, dropping `Nats` stops and reaps the server.
        let nats = Nats {
            child,
            port,
            _dir: dir,
        };
        for _ in 0..400 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return nats;
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("nats-server did not start");
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    #[allow(dead_code)]
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}
