//! Running `krr replay ... --gdb PORT` under Debian's gdb in batch mode (tests/run.sh installs
//! gdb when it is missing).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// A free local port (bound then released; the stub binds it again right away).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `KRR replay -q ARGS --gdb PORT` (or, when an argument says `PORT`, with the port there)
/// under `gdb -batch` with `commands`: (gdb's output, krr's stderr, krr's exit status).
pub fn under_gdb(krr: &Path, args: &[&str], commands: &[String]) -> (String, String, i32) {
    use std::io::BufRead;
    let port = free_port().to_string();
    let placed = args.iter().any(|a| a.contains("PORT"));
    let mut args: Vec<String> = args.iter().map(|a| a.replace("PORT", &port)).collect();
    if !placed {
        args.extend(["--gdb".to_string(), port.clone()]);
    }
    let mut stub = Command::new(krr)
        .args(["replay", "-q"])
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // krr's stderr, line by line: gdb starts once the stub says it listens.
    let (tx, rx) = std::sync::mpsc::channel();
    let stderr = stub.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let mut stub_err = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the stub never said it listens");
        stub_err += &line;
        stub_err.push('\n');
        if line.contains("waiting for gdb") {
            break;
        }
    }
    let mut gdb = Command::new("gdb");
    // gdb gives up on a packet after 2 s by default; a loaded test machine can take longer
    // to answer one (a replay to a far position), and a lost reply skews the whole script.
    gdb.args(["-batch", "-nx", "-ex", "set remotetimeout 60"])
        .arg("-ex")
        .arg(format!("target remote :{port}"));
    for c in commands {
        gdb.arg("-ex").arg(c);
    }
    let out = gdb
        .output()
        .expect("gdb (Debian package gdb; tests/run.sh installs it)");
    let status = stub.wait().unwrap();
    reader.join().unwrap();
    for line in rx.try_iter() {
        stub_err += &line;
        stub_err.push('\n');
    }
    (
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
        stub_err,
        status.code().unwrap_or(-1),
    )
}

/// Every `icount N` line's N, in order (`monitor icount`, and `monitor goto`'s `icount N (…)`).
pub fn icounts(out: &str) -> Vec<u64> {
    out.lines()
        .filter_map(|l| l.strip_prefix("icount "))
        .map(|l| l.split(' ').next().unwrap().parse().unwrap())
        .collect()
}

/// gdb's output between the previous `rip ` line and `tag` (an `info registers` block).
pub fn block(out: &str, tag: &str) -> String {
    let end = out.find(tag).unwrap_or_else(|| panic!("{tag}: {out}"));
    let start = out[..end].rfind("rip ").expect(out);
    out[start..end].to_string()
}
