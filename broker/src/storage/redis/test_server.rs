//! A real `redis-server` for the unit tests: one per test process, on a free port,
//! without persistence, started by a thread that lives as long as the process and asks
//! the kernel to end the server when that thread ends (`PR_SET_PDEATHSIG`), so no server
//! outlives its tests. A missing `redis-server` fails the test that needs it.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A replica of the process's test server (`--replicaof`), started on first use and kept
/// for the process's life like the server; answers its URL.
pub(crate) fn replica_url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let primary = url();
        let port = primary.rsplit(':').next().unwrap_or_default().to_owned();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("redis-test-replica".into())
            .spawn(move || {
                let started = start(&["--replicaof".into(), "127.0.0.1".into(), port]);
                let failed = started.is_err();
                let _ = tx.send(started);
                if !failed {
                    loop {
                        std::thread::park();
                    }
                }
            })
            .expect("spawn the replica keeper thread");
        match rx.recv() {
            Ok(Ok(url)) => url,
            Ok(Err(why)) => panic!("{why}"),
            Err(_) => panic!("the replica keeper thread died"),
        }
    })
    .clone()
}

/// The URL of the process's test server, started on first use.
pub(crate) fn url() -> String {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("redis-test-server".into())
            .spawn(move || {
                let started = start(&[]);
                let failed = started.is_err();
                let _ = tx.send(started);
                if !failed {
                    // The server is tied to this thread's life: keep it for the process's.
                    loop {
                        std::thread::park();
                    }
                }
            })
            .expect("spawn the redis-server keeper thread");
        match rx.recv() {
            Ok(Ok(url)) => url,
            Ok(Err(why)) => panic!("{why}"),
            Err(_) => panic!("the redis-server keeper thread died"),
        }
    })
    .clone()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// Starts `redis-server` on a free port; retries when another process took the port
/// between the probe and the server's bind.
fn start(extra: &[String]) -> Result<String, String> {
    // Its own directory: a replica's full sync writes `dump.rdb` there, and a server
    // started in a directory holding one loads it (the next test run would see this
    // run's keys). Kept for the process's life, like the server.
    let dir = tempfile::tempdir()
        .map_err(|e| format!("a temp dir for redis-server: {e}"))?
        .keep();
    for _ in 0..5 {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(&dir)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
        // SAFETY: prctl is async-signal-safe and touches nothing of the parent's.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!("cannot start redis-server ({e}): install it (apt-get install redis-server); these tests need a real one")
        })?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut lines = BufReader::new(stdout).lines();
        let mut ready = false;
        while Instant::now() < deadline {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to accept connections") => {
                    ready = true;
                    break;
                }
                Some(Ok(_)) => {}
                _ => break,
            }
        }
        if ready {
            // Keep draining its output so it never blocks on a full pipe.
            std::thread::spawn(move || lines.for_each(drop));
            return Ok(format!("redis://127.0.0.1:{port}"));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
    Err("redis-server did not start on any of 5 ports".into())
}
