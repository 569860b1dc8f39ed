//! Child processes of a test binary that re-spawns itself in a role (`ROLE`), and the lines
//! they print, read one at a time.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};

/// The environment variable that names a child's role.
pub const ROLE: &str = "DISTCACHE_TEST_ROLE";

/// A child process and its output, read line by line through one buffer.
pub struct Kid {
    pub child: Child,
    out: Option<BufReader<ChildStdout>>,
}

/// Re-spawns this binary in `role`, with `envs`.
pub fn spawn(role: &str, envs: &[(&str, String)]) -> Kid {
    let mut child = Command::new(std::env::current_exe().expect("the test binary"))
        .env(ROLE, role)
        .envs(envs.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a child");
    let out = BufReader::new(child.stdout.take().expect("piped stdout"));
    Kid {
        child,
        out: Some(out),
    }
}

/// The next line a child prints, read on a blocking thread.
pub async fn line_from(kid: &mut Kid) -> String {
    let mut out = kid.out.take().expect("one reader at a time");
    let (line, out) = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        out.read_line(&mut line).expect("read a child's line");
        (line, out)
    })
    .await
    .expect("the reader thread");
    kid.out = Some(out);
    line.trim_end().to_owned()
}

/// Writes `line` to a child's stdin.
pub fn say(stdin: &mut ChildStdin, line: &str) {
    writeln!(stdin, "{line}").expect("write to a child");
}
