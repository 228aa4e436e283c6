//! `cargo xtask build` and `cargo xtask demo`: the release binary, and a trace of the bundled
//! demo program that writes its report, page and flame graphs.
use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context as _, Result};

use crate::{
    setup::setup,
    util::{as_root, cargo, compile_c, run, workspace_root},
};

pub fn build_release() -> Result<()> {
    run(cargo().args(["build", "--release", "-p", "leak-user"]))
}

pub fn demo(seconds: u64) -> Result<()> {
    setup()?;
    build_release()?;
    let root = workspace_root();
    let demo_bin = root.join("target/demo/leak-demo");
    compile_c(&root.join("xtask/programs/demo.c"), &demo_bin)?;
    let mut demo =
        Command::new(&demo_bin).stdout(Stdio::piped()).spawn().context("starting the demo")?;
    // Wait for its first line: it is running and has allocated.
    if let Some(stdout) = demo.stdout.take() {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        eprint!("{line}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let leak = root.join("target/release/leak");
    let pid = demo.id().to_string();
    let duration = format!("{seconds}s");
    let mut cmd = as_root(&leak);
    cmd.args(["attach", "--pid", &pid, "--duration", &duration, "--interval", "2s", "--top", "3"])
        .args(["--svg", "leaks.svg", "--svg-diff", "leaks-diff.svg", "--json", "leaks.json"])
        .args(["--folded", "leaks.folded", "--html", "leaks.html", "--limit", "256M"])
        .current_dir(&root);
    let result = run(&mut cmd);
    let _ = demo.kill();
    let _ = demo.wait();
    result?;
    eprintln!(
        "\ndemo: the leak is parse_request's malloc(512); open {} in a browser (the charts \
         and both flame graphs), or {} (the flame graph alone)",
        root.join("leaks.html").display(),
        root.join("leaks.svg").display()
    );
    Ok(())
}
