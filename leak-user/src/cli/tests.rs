//! The command line as users type it: what each command parses to, and what it refuses.

use clap::CommandFactory as _;

use super::*;

fn parse(args: &[&str]) -> Result<Command, clap::Error> {
    Cli::try_parse_from(args).map(|c| c.command.into())
}

#[test]
fn an_agent_config_file_is_flags_the_command_line_overrides() {
    let flags = config_flags(
        "listen = \"127.0.0.1:9000\"\nmax-traced = 3\nnamespace = [\"shop\", \"bill*\"]\n\
         trace-for = \"30s\"\n",
    )
    .unwrap();
    assert_eq!(
        flags,
        [
            "--listen=127.0.0.1:9000",
            "--max-traced=3",
            "--namespace=shop",
            "--namespace=bill*",
            "--trace-for=30s"
        ]
    );
    assert!(config_flags("listen = {a = 1}").is_err());
    assert!(config_flags("not toml at all [").is_err());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("agent.toml");
    std::fs::write(&file, "max-traced = 3\nnamespace = [\"shop\"]\n").unwrap();
    let args: Vec<OsString> = ["leak", "agent", "--config", file.to_str().unwrap()]
        .into_iter()
        .chain(["--max-traced", "5", "--namespace", "web"])
        .map(OsString::from)
        .collect();
    let expanded = expand_config(args).unwrap();
    let command: Command = Cli::try_parse_from(expanded).unwrap().command.into();
    let Command::Watch(w) = command else { panic!("agent is a watch") };
    assert_eq!(w.max_traced, 5, "the command line wins");
    let sel = w.agent.unwrap().selection;
    assert_eq!(sel.namespaces, ["shop", "web"], "lists add up");
    assert_eq!(w.targets, Targets::Pods, "pods by default");
    let missing = vec![OsString::from("leak"), "agent".into(), "--config=/nonexistent".into()];
    assert!(expand_config(missing).unwrap_err().starts_with("cannot read /nonexistent"));
    // Other commands are left alone.
    let other: Vec<OsString> = ["leak", "watch", "--all"].map(OsString::from).to_vec();
    assert_eq!(expand_config(other.clone()).unwrap(), other);
}

/// `leak agent ARGS`, which is a watch.
fn agent(args: &[&str]) -> crate::config::WatchConfig {
    let mut all = vec!["leak", "agent"];
    all.extend_from_slice(args);
    let Command::Watch(w) = parse(&all).unwrap() else { panic!("agent is a watch") };
    w
}

#[test]
fn the_agent_watches_plain_processes_when_asked() {
    let targets = |args: &[&str]| agent(args).targets;
    assert_eq!(targets(&[]), Targets::Pods);
    assert_eq!(targets(&["--all"]), Targets::All);
    assert_eq!(targets(&["--pid", "7", "--pid", "9"]), Targets::Pids(vec![7, 9]));
    assert_eq!(targets(&["--process", "nginx"]), Targets::All);
    assert_eq!(targets(&["--pods", "--process", "nginx"]), Targets::Pods);
    assert!(parse(&["leak", "agent", "--all", "--pods"]).is_err());
}

#[test]
fn an_agent_with_no_trace_only_watches() {
    let escalate = |args: &[&str]| agent(args).escalate;
    assert_eq!(escalate(&[]), Some(std::time::Duration::from_mins(2)));
    assert_eq!(escalate(&["--trace-for", "30s"]), Some(std::time::Duration::from_secs(30)));
    assert_eq!(escalate(&["--no-trace"]), None);
    assert!(parse(&["leak", "agent", "--no-trace", "--trace-for", "30s"]).is_err());
}

#[test]
fn verify_cli() {
    Cli::command().debug_assert();
}

#[test]
fn attach_with_every_option() {
    let c = parse(&[
        "leak",
        "attach",
        "--pid",
        "1234",
        "--interval",
        "2s",
        "--duration",
        "1m",
        "--top",
        "3",
        "--min-age",
        "10s",
        "--svg",
        "a.svg",
        "--json",
        "a.json",
        "--folded",
        "a.folded",
        "--lib",
        "/lib/libc.so.6",
        "--max-allocs",
        "5000",
        "--sample-interval",
        "500ms",
        "--svg-diff",
        "d.svg",
        "--limit",
        "1G",
        "--fail-on-leak",
        "--threshold",
        "64K",
    ])
    .unwrap();
    let Command::Attach { pid, trace } = c else { panic!("not attach") };
    assert_eq!(pid, 1234);
    assert_eq!(trace.interval, Duration::from_secs(2));
    assert_eq!(trace.duration, Some(Duration::from_mins(1)));
    assert_eq!(trace.top, 3);
    assert_eq!(trace.min_age, Duration::from_secs(10));
    assert_eq!(trace.outputs.svg.as_deref(), Some(std::path::Path::new("a.svg")));
    assert_eq!(trace.outputs.paths().count(), 4);
    assert_eq!(trace.sample_interval, Duration::from_millis(500));
    assert_eq!(trace.limit, Some(1 << 30));
    assert_eq!(trace.gate, Some(crate::config::Gate::default()));
    assert_eq!(trace.min_growth, Some(64 << 10), "--threshold is --min-growth");
    assert_eq!(trace.lib.as_deref(), Some(std::path::Path::new("/lib/libc.so.6")));
    assert_eq!(trace.max_allocs, 5000);
}

#[test]
fn defaults() {
    let Command::Attach { trace, .. } = parse(&["leak", "attach", "--pid", "1"]).unwrap() else {
        panic!()
    };
    assert_eq!(trace, TraceConfig::default());
}

#[test]
fn run_takes_the_command_after_dashes_or_after_its_options() {
    let c = parse(&["leak", "run", "--json", "r.json", "--", "./server", "--port", "80"]).unwrap();
    let Command::Run { argv, trace, follow_forks } = c else { panic!("not run") };
    assert_eq!(argv, ["./server", "--port", "80"]);
    assert!(trace.outputs.json.is_some());
    assert!(!follow_forks);
    assert!(trace.report_to_stderr, "the command's stdout is the command's");
    assert_eq!(trace.sample_interval, RUN_SAMPLE_INTERVAL);
    let c = parse(&["leak", "run", "--follow-forks", "--", "make"]).unwrap();
    assert!(matches!(c, Command::Run { follow_forks: true, .. }));
    // Without `--`: everything from the command on is the command's.
    let c = parse(&["leak", "run", "--json", "r.json", "./server", "--json", "x"]).unwrap();
    let Command::Run { argv, trace, .. } = c else { panic!("not run") };
    assert_eq!(argv, ["./server", "--json", "x"]);
    assert_eq!(trace.outputs.json.as_deref(), Some(std::path::Path::new("r.json")));
}

#[test]
fn the_gate_takes_rules_and_follows_forks() {
    let gate = |args: &[&str]| {
        let mut all = vec!["leak", "run"];
        all.extend_from_slice(args);
        all.extend(["./test", "arg"]);
        let Command::Run { argv, trace, follow_forks } = parse(&all).unwrap() else {
            panic!("not run")
        };
        assert_eq!(argv, ["./test", "arg"], "a bare --fail-on-leak takes no value");
        (trace.gate, follow_forks)
    };
    let g = crate::config::Gate::default();
    assert_eq!(gate(&["--fail-on-leak"]), (Some(g), true), "a gate traces what it starts");
    let exit = crate::config::Gate { growth: false, exit: true, ..g };
    assert_eq!(gate(&["--fail-on-leak=exit"]), (Some(exit), true));
    let both = crate::config::Gate { exit: true, ..g };
    assert_eq!(gate(&["--fail-on-leak=growth,exit"]), (Some(both), true));
    let lenient = crate::config::Gate { allow_inconclusive: true, ..g };
    assert_eq!(gate(&["--fail-on-leak", "--allow-inconclusive"]), (Some(lenient), true));
    assert_eq!(gate(&[]), (None, false));
    // attach samples every second by default; --max-overhead is one name everywhere.
    let Command::Attach { trace, .. } =
        parse(&["leak", "attach", "--pid", "1", "--overhead-budget", "5%"]).unwrap()
    else {
        panic!()
    };
    assert_eq!((trace.sample_interval, trace.max_overhead), (ATTACH_SAMPLE_INTERVAL, Some(500)));
}

#[test]
fn listen_addresses_as_people_write_them() {
    let addr = |s: &str| parse_listen(s).map(|a| a.to_string());
    assert_eq!(addr("0.0.0.0:9464").unwrap(), "0.0.0.0:9464");
    assert_eq!(addr(":9464").unwrap(), "0.0.0.0:9464");
    assert_eq!(addr("[::1]:9464").unwrap(), "[::1]:9464");
    let local = addr("localhost:9464").unwrap();
    assert!(local == "127.0.0.1:9464" || local == "[::1]:9464", "{local}");
    assert!(addr("localhost").unwrap_err().contains("use ADDR:PORT, HOST:PORT or :PORT"));
    assert!(addr(":http").is_err());
}

#[test]
fn watch_takes_pids_all_or_pods() {
    let c = parse(&["leak", "watch", "--pid", "7", "--pid", "9", "--escalate", "30s"]).unwrap();
    let Command::Watch(w) = c else { panic!("not watch") };
    assert_eq!(w.targets, Targets::Pids(vec![7, 9]));
    assert_eq!(w.escalate, Some(Duration::from_secs(30)));
    assert_eq!(w.min_growth, 1 << 20);
    assert_eq!(w.out_dir, PathBuf::from("."));
    let Command::Watch(w) = parse(&["leak", "watch", "--all"]).unwrap() else { panic!() };
    assert_eq!(w.targets, Targets::All);
    let Command::Watch(w) = parse(&["leak", "watch", "--pods"]).unwrap() else { panic!() };
    assert_eq!(w.targets, Targets::Pods);
    let none = parse(&["leak", "watch"]).unwrap_err().to_string();
    assert!(none.contains("--pid") && none.contains("--all") && none.contains("--pods"), "{none}");
    let Command::Watch(w) =
        parse(&["leak", "watch", "--all", "--trace-for", "1m", "--max-overhead", "2%"]).unwrap()
    else {
        panic!()
    };
    assert_eq!((w.escalate, w.max_overhead), (Some(Duration::from_mins(1)), Some(200)));
    assert!(parse(&["leak", "watch", "--all", "--pid", "1"]).is_err());
    assert!(parse(&["leak", "watch", "--pods", "--pid", "1"]).is_err());
    assert!(parse(&["leak", "watch", "--pods", "--all"]).is_err());
    assert!(parse(&["leak", "watch", "--all", "--escalate", "0s"]).is_err());
}

#[test]
fn rejects_bad_input() {
    assert!(parse(&["leak", "attach"]).is_err(), "pid is required");
    assert!(parse(&["leak", "attach", "--pid", "0"]).is_err());
    assert!(parse(&["leak", "attach", "--pid", "x"]).is_err());
    assert!(parse(&["leak", "attach", "--pid", "1", "--interval", "1ms"]).is_err());
    assert!(parse(&["leak", "attach", "--pid", "1", "--duration", "soon"]).is_err());
    assert!(parse(&["leak", "attach", "--pid", "1", "--top", "0"]).is_err());
    assert!(parse(&["leak", "attach", "--pid", "1", "--limit", "lots"]).is_err());
    assert!(
        parse(&["leak", "attach", "--pid", "1", "--allow-inconclusive"]).is_err(),
        "--allow-inconclusive needs --fail-on-leak"
    );
    assert!(parse(&["leak", "attach", "--pid", "1", "--fail-on-leak=never"]).is_err());
    assert!(parse(&["leak", "run"]).is_err(), "command is required");
    let e = parse(&["leak", "attach", "--pid", "1", "--interval", "1ms"]).unwrap_err();
    assert_eq!(e.exit_code(), 2);
}
