//! The watch list's judgements, on series of known shape.
#![expect(clippy::cast_precision_loss, reason = "small test values")]

use super::*;
use crate::{
    analysis::report::{EndReason, Window},
    fleet::report::{WatchReport, render},
};

fn obs(pid: u32, start: u64, private: u64) -> Observation {
    Observation {
        pid,
        start_ticks: start,
        comm: format!("p{pid}"),
        cmdline: "".into(),
        memory: ProcessMemory { rss: private + (1 << 20), private },
        pod: None,
    }
}

#[test]
fn judges_each_process_keeps_exited_leakers_and_forgets_the_rest() {
    const MB: u64 = 1 << 20;
    let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
    let mut list = WatchList::new(1.0).judging(params);
    for t in 0..30u64 {
        let mut seen = vec![
            // Leaks 1 MiB per second.
            obs(10, 1, 8 * MB + t * MB),
            // Flat.
            obs(20, 1, 50 * MB),
            // A cache: fills over 5 s, then holds.
            obs(30, 1, 4 * MB + t.min(5) * 4 * MB),
        ];
        // Leaks 2 MiB/s and exits after 10 s; its pid comes back as a new process at
        // 20 s.
        if t < 10 {
            seen.push(obs(40, 1, MB + 2 * t * MB));
        } else if t >= 20 {
            seen.push(obs(40, 2, MB));
        }
        // Flat, and exits after 10 s: forgotten.
        if t < 10 {
            seen.push(obs(50, 1, 9 * MB));
        }
        list.observe(t as f64, &seen, if t == 29 { Kind::Last } else { Kind::Tick }, false);
    }
    let judged = list.judge(&params);
    let verdicts: Vec<(u32, u64, Verdict, bool)> =
        judged.iter().map(|p| (p.pid, p.start_time_ticks, p.trend.verdict, p.exited)).collect();
    assert_eq!(
        verdicts,
        [
            // The exited leaker first (it leaked faster), kept with its series.
            (40, 1, Verdict::Leak, true),
            (10, 1, Verdict::Leak, false),
            (30, 1, Verdict::Plateau, false),
            (20, 1, Verdict::Stable, false),
            (40, 2, Verdict::Stable, false),
        ]
    );
    let leak = &judged[1];
    assert!((leak.trend.rate_bytes_per_s - MB as f64).abs() < 1.0);
    assert_eq!(leak.anon_bytes, 37 * MB);
    assert_eq!(leak.rss_bytes, 38 * MB);
    assert_eq!(leak.series.t_s.len(), 30);
    assert_eq!(judged[0].anon_bytes, 19 * MB, "up to its exit");
    // The new process under pid 40 is watched from when it appeared.
    assert!((judged[4].watched_s - 9.0).abs() < 1e-9);
    assert_eq!((list.len(), list.running()), (5, 4));
}

#[test]
fn exited_leakers_kept_are_bounded() {
    const MB: u64 = 1 << 20;
    let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
    let mut list = WatchList::new(1.0).judging(params);
    // 100 processes, each leaking for 8 s then exiting, one after the other.
    let mut t = 0.0;
    for pid in 1..=100u32 {
        for i in 0..8u64 {
            list.observe(t, &[obs(pid, 1, (1 + i) * MB)], Kind::Tick, false);
            t += 1.0;
        }
    }
    list.observe(t, &[], Kind::Tick, false);
    assert_eq!(list.len(), MAX_EXITED_KEPT, "the latest ones");
    let pids: Vec<u32> = list.judge(&params).iter().map(|p| p.pid).collect();
    assert!(pids.iter().all(|&p| p > 100 - 64), "{pids:?}");
}

#[test]
fn growth_below_the_floor_is_said_not_hidden() {
    const MB: u64 = 1 << 20;
    let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
    let mut list = WatchList::new(1.0).judging(params);
    // 37 MiB/h is 10.5 KiB/s: 310 KiB in a 30 s watch, under the 1 MiB floor.
    for t in 0..30u64 {
        let seen = [obs(10, 1, 8 * MB + t * 10_777), obs(20, 1, 50 * MB)];
        list.observe(t as f64, &seen, Kind::Tick, false);
    }
    let judged = list.judge(&params);
    assert_eq!(judged[0].trend.verdict, Verdict::Stable);
    let hidden = list.below_floor(&judged, &params);
    assert_eq!(hidden.len(), 1, "{hidden:?}");
    assert_eq!((hidden[0].0, hidden[0].1.as_str()), (10, "p10"));
    let note = floor_note(&hidden, params.min_growth_bytes).unwrap();
    assert!(
        note.starts_with("1 process grew steadily by less than --min-growth 1.0 MiB over the window, the fastest pid 10 (p10) at +37.0 MiB/h: lower it"),
        "{note}"
    );
    // A floor at the hint's own: nothing more to say.
    assert!(list.below_floor(&judged, &Params { min_growth_bytes: 4096.0, ..params }).is_empty());
}

#[test]
fn a_watch_of_nothing_says_why() {
    let seen = |candidates, in_pods, watched| Seen { candidates, in_pods, watched, exited: 0 };
    let no_pods = why_nothing(&Targets::Pods, None, seen(120, 0, 0)).unwrap();
    assert!(no_pods.starts_with("no process of this host runs in a Kubernetes pod"), "{no_pods}");
    assert!(no_pods.ends_with("pass --all, --pid or --process to watch processes outside pods"));
    let sel = Selection { namespaces: vec!["shop".into()], ..Selection::default() };
    let unselected = why_nothing(&Targets::Pods, Some(&sel), seen(120, 7, 0)).unwrap();
    assert!(
        unselected.starts_with("7 processes run in pods, and none is selected"),
        "{unselected}"
    );
    let by_name = Selection { processes: vec!["nginx".into()], ..Selection::default() };
    let none = why_nothing(&Targets::All, Some(&by_name), seen(120, 0, 0)).unwrap();
    assert_eq!(none, "none of the 120 processes matches --process (or the other selections)");
    assert_eq!(why_nothing(&Targets::Pods, None, seen(120, 7, 7)), None);
    // The pods' processes watched so far have exited (killed): said so, not "no pod".
    let gone = why_nothing(&Targets::Pods, None, Seen { exited: 2, ..seen(120, 0, 0) });
    assert_eq!(
        gone.as_deref(),
        Some("no selected process runs now: the 2 watched before exited (kept in this report)")
    );
}

#[test]
fn oom_victims_are_kept_with_their_chart_and_told_by_event_or_counter() {
    const MB: u64 = 1 << 20;
    let in_container = |pid, private, id: char| Observation {
        pod: Some(PodRef::unnamed(
            "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
            Some(id.to_string().repeat(64)),
            None,
            crate::fleet::pods::QosClass::Burstable,
        )),
        ..obs(pid, 1, private)
    };
    let cgroup = |id: char, kills| ContainerObservation {
        pod: in_container(0, 0, id).pod.unwrap(),
        memory: CgroupMemory { usage: 0, anon: 0, working_set: 0, limit: Some(64 * MB) },
        processes: 1,
        oom_kills: Some(kills),
        dir: None,
    };
    let params = Params { min_growth_bytes: MB as f64, ..Params::default() };
    // Told by the kernel's event: a stable process (forgotten at exit otherwise) killed.
    let mut list = WatchList::new(1.0).judging(params);
    for t in 0..5u64 {
        list.observe(t as f64, &[obs(10, 1, 8 * MB), obs(11, 1, 8 * MB)], Kind::Tick, false);
    }
    assert!(list.mark_oom_killed(10, 4.5, "tracepoint"));
    assert!(!list.mark_oom_killed(99, 4.5, "tracepoint"), "not watched");
    assert!(list.vanished(&[obs(11, 1, 8 * MB)]));
    list.observe(5.0, &[obs(11, 1, 8 * MB)], Kind::Tick, false);
    let killed = list.take_killed(&params);
    assert_eq!(killed.len(), 1);
    assert_eq!((killed[0].process.pid, killed[0].at, killed[0].seen_by), (10, 4.5, "tracepoint"));
    assert!(killed[0].process.exited && killed[0].process.series.t_s.len() == 5);
    assert!(list.take_killed(&params).is_empty(), "once");
    // Told by counters: of the two processes gone from container a, whose count rose by
    // one, the larger; b's count did not rise, so its process merely exited.
    let mut list = WatchList::new(1.0).judging(params).counting_kills(true);
    for t in 0..5u64 {
        let kills = u64::from(t == 4);
        list.observe_containers(t as f64, &[cgroup('a', kills), cgroup('b', 0)], Kind::Tick);
        let seen = if t < 4 {
            vec![
                in_container(20, 30 * MB, 'a'),
                in_container(21, 2 * MB, 'a'),
                in_container(22, 9 * MB, 'b'),
            ]
        } else {
            Vec::new()
        };
        list.observe(t as f64, &seen, Kind::Tick, false);
    }
    let killed = list.take_killed(&params);
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!((killed[0].process.pid, killed[0].seen_by), (20, "cgroup_counter"));
    let limit = killed[0].limit.as_ref().map(|l| (l.limit, l.working_set));
    assert_eq!(limit, Some((64 * MB, 0)), "its container's, though it is gone");
    // A count that rose with no watched process gone (the victim was not watched) is not
    // taken later for another process's exit.
    let mut list = WatchList::new(1.0).judging(params).counting_kills(true);
    for t in 0..6u64 {
        let kills = u64::from(t >= 2);
        list.observe_containers(t as f64, &[cgroup('a', kills)], Kind::Tick);
        let seen = if t < 4 { vec![in_container(30, 9 * MB, 'a')] } else { Vec::new() };
        list.observe(t as f64, &seen, Kind::Tick, false);
    }
    assert!(list.take_killed(&params).is_empty());
    // A group kill (memory.oom.group): one kill, the largest its victim.
    let mut list = WatchList::new(1.0).judging(params);
    let both = [in_container(40, 30 * MB, 'a'), in_container(41, 2 * MB, 'a')];
    for t in 0..3u64 {
        list.observe(t as f64, &both, Kind::Tick, false);
    }
    assert!(list.mark_oom_killed(41, 2.5, "tracepoint"));
    assert!(list.mark_oom_killed(40, 2.5, "tracepoint"));
    list.observe(3.0, &[], Kind::Tick, false);
    let killed = list.take_killed(&params);
    assert_eq!(killed.len(), 1, "{killed:?}");
    assert_eq!((killed[0].process.pid, killed[0].also_killed.as_slice()), (40, &[41][..]));
}

#[test]
fn processes_named_by_pid_are_kept_when_they_exit() {
    let mut list = WatchList::new(1.0);
    for t in 0..10u64 {
        let seen: Vec<Observation> =
            if t < 8 { vec![obs(10, 1, (8 + t) << 20)] } else { Vec::new() };
        list.observe(t as f64, &seen, Kind::Tick, true);
    }
    assert_eq!((list.len(), list.running()), (1, 0));
    let judged =
        list.judge(&Params { min_growth_bytes: f64::from(1u32 << 20), ..Params::default() });
    assert!(judged[0].exited);
    assert_eq!(judged[0].trend.verdict, Verdict::Leak, "its series up to the exit");
    assert_eq!(judged[0].anon_bytes, 15 << 20);
}

#[test]
fn judges_each_container_on_its_cgroup_and_forgets_the_gone() {
    const MB: u64 = 1 << 20;
    let container = |id: char, anon: u64| ContainerObservation {
        pod: PodRef::unnamed(
            "8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b".into(),
            Some(id.to_string().repeat(64)),
            Some("containerd".into()),
            crate::fleet::pods::QosClass::Burstable,
        ),
        // A limit of 200 MiB; the page cache is all active.
        memory: CgroupMemory {
            usage: anon + 100 * MB,
            anon,
            working_set: anon + 100 * MB,
            limit: Some(200 * MB),
        },
        processes: 2,
        oom_kills: Some(0),
        dir: None,
    };
    let mut list = WatchList::new(1.0);
    for t in 0..30u64 {
        // a leaks 1 MiB/s; b is flat; c is gone (restarted: a new id) after 10 s.
        let mut seen = vec![container('a', 10 * MB + t * MB), container('b', 50 * MB)];
        if t < 10 {
            seen.push(container('c', MB));
        }
        list.observe_containers(t as f64, &seen, Kind::Tick);
    }
    let judged =
        list.judge_containers(&Params { min_growth_bytes: MB as f64, ..Params::default() });
    let got: Vec<(char, Verdict)> = judged
        .iter()
        .map(|c| (c.pod.container_id.as_ref().unwrap().chars().next().unwrap(), c.trend.verdict))
        .collect();
    assert_eq!(got, [('a', Verdict::Leak), ('b', Verdict::Stable)]);
    assert!((judged[0].trend.rate_bytes_per_s - MB as f64).abs() < 1.0);
    assert_eq!((judged[0].anon_bytes, judged[0].memory_bytes), (39 * MB, 139 * MB));
    assert_eq!(judged[0].processes, 2);
    // At 1 MiB/s, the 61 MiB left under the limit last 61 s; the flat one is not projected.
    assert_eq!((judged[0].limit_bytes, judged[0].working_set_bytes), (Some(200 * MB), 139 * MB));
    assert_eq!(judged[0].seconds_to_limit, Some(61.0));
    assert_eq!(judged[1].seconds_to_limit, None);
    // Rendered under the processes, with the container's id.
    let report = WatchReport {
        version: 1,
        window: Window { start_unix_s: 0.0, end_unix_s: 29.0 },
        duration_s: 29.0,
        processes_watched: 0,
        processes: Vec::new(),
        containers: judged,
        escalations: Vec::new(),
        not_escalated: Vec::new(),
        oom_kills: Vec::new(),
        end_reason: EndReason::Duration,
        notes: Vec::new(),
    };
    let text = render(&report, "watch", 10);
    assert!(
        text.contains("no process's memory is growing\ncontainers (memory cgroup):\n"),
        "{text}"
    );
    assert!(
        text.contains("  139.0 MiB    39.0 MiB    +29.0 MiB     +3.5 GiB/h  leak (confidence 99.9%)  pod 8f3a9c2e-1b4d-4e6f-9a7b-0c1d2e3f4a5b container aaaaaaaaaaaa\n"),
        "{text}"
    );
    assert!(!text.contains("bbbbbbbbbbbb"), "{text}");
}

#[test]
fn renders_the_growing_processes() {
    let mut list = WatchList::new(1.0);
    for t in 0..20u64 {
        // Three python3s: named by what they run; one exits while leaking.
        let named = |pid, private, cmdline: &str| Observation {
            comm: "python3".into(),
            cmdline: cmdline.into(),
            ..obs(pid, 1, private)
        };
        let mut seen = vec![
            obs(10, 1, (8 + t) << 20),
            obs(20, 1, 1 << 20),
            named(30, (8 + 2 * t) << 20, "/usr/bin/python3 ingest.py --queue orders"),
            named(31, 1 << 20, "/usr/bin/python3 web.py"),
        ];
        if t < 12 {
            seen.push(named(32, (8 + 3 * t) << 20, "python3 -m batch"));
        }
        list.observe(t as f64, &seen, Kind::Tick, false);
    }
    let params = Params { min_growth_bytes: f64::from(1u32 << 20), ..Params::default() };
    let report = WatchReport {
        version: 1,
        window: Window { start_unix_s: 0.0, end_unix_s: 19.0 },
        duration_s: 19.0,
        processes_watched: 2,
        processes: list.judge(&params),
        containers: Vec::new(),
        escalations: Vec::new(),
        not_escalated: Vec::new(),
        oom_kills: Vec::new(),
        end_reason: EndReason::Duration,
        notes: Vec::new(),
    };
    let text = render(&report, "watch", 10);
    assert!(
        text.starts_with("== watch: 2 processes watched; 3 leaking, 0 growing, 0 plateau ==\n"),
        "{text}"
    );
    assert!(
        text.contains("\n      10  p10                             27.0 MiB    +19.0 MiB     +3.5 GiB/h  leak (confidence 99.9%)\n"),
        "{text}"
    );
    assert!(
        text.contains("\n      30  python3 ingest.py --queue...    46.0 MiB    +38.0 MiB     +7.0 GiB/h  leak (confidence 99.9%)\n"),
        "{text}"
    );
    assert!(
        text.contains("\n      32  python3 -m batch                41.0 MiB    +33.0 MiB    +10.5 GiB/h  leak (confidence 99.9%) (exited)\n"),
        "{text}"
    );
    assert!(!text.contains("p20") && !text.contains("web.py"), "{text}");
}
