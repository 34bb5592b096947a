//! `--procs N`: the parent starts N worker processes of this same binary,
//! each running every N-th client, and merges what they report.
//!
//! A worker gets the scenario and options as JSON in the
//! [`WORKER_ENV`] environment variable and talks back in JSON lines on
//! stdout ([`ChildMsg`]); the parent releases all workers together with a
//! `go` line on their stdin once every one of them is connected, so traffic
//! starts at the same instant everywhere.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::cli::Opts;
use crate::report::Report;
use crate::sample::Sampler;
use crate::scenario::Plan;
use crate::worker::{apply_expected, ChildMsg, Snapshot, Timeline};

/// Environment variable carrying a worker's [`WorkerSpec`].
pub const WORKER_ENV: &str = "TETHER_BENCH_WORKER";

#[derive(Debug, Serialize, Deserialize)]
pub struct WorkerSpec {
    pub scenario: String,
    pub opts: Opts,
}

/// Runs the plan over `plan.opts.procs` worker processes.
pub fn run_parent(plan: &Plan) -> Result<Report, String> {
    let procs = plan.opts.procs;
    let exe = std::env::current_exe().map_err(|e| format!("locating tether-bench: {e}"))?;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut sampler = match plan.opts.target_pid {
        Some(pid) => Some(Sampler::new(pid)?),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<(usize, Option<ChildMsg>)>();
    let mut children: Vec<(Child, ChildStdin)> = Vec::with_capacity(procs);
    for i in 0..procs {
        let mut opts = plan.opts.clone();
        opts.worker = Some(i);
        opts.workers = procs;
        opts.client_prefix = Some(plan.prefix.clone());
        opts.cores = Some(plan.opts.cores.unwrap_or((cpus / procs).max(1)));
        opts.target_pid = None;
        opts.json = None;
        opts.report = None;
        let spec = WorkerSpec {
            scenario: plan.name.to_string(),
            opts,
        };
        let mut child = Command::new(&exe)
            .env(
                WORKER_ENV,
                serde_json::to_string(&spec).expect("serialisable"),
            )
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting worker {i}: {e}"))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let tx = tx.clone();
        std::thread::Builder::new()
            .name(format!("bench-worker-{i}"))
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    match serde_json::from_str::<ChildMsg>(&line) {
                        Ok(m) => {
                            if tx.send((i, Some(m))).is_err() {
                                return;
                            }
                        }
                        Err(_) => eprintln!("worker {i}: {line}"),
                    }
                }
                let _ = tx.send((i, None));
            })
            .map_err(|e| format!("spawning a reader thread: {e}"))?;
        children.push((child, stdin));
    }
    drop(tx);

    let started = Instant::now();
    let mut timeline = Timeline::new(started);
    let mut latest = vec![Snapshot::default(); procs];
    let mut ready = vec![false; procs];
    let mut reports: Vec<Option<Report>> = (0..procs).map(|_| None).collect();
    let mut go: Option<Instant> = None;
    let mut ended = false;
    let mut last_line = Instant::now();
    let mut prev = Snapshot::default();
    let duration = Duration::from_secs_f64(plan.opts.duration);
    let mut exited = 0;
    while exited < procs {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok((i, Some(ChildMsg::Progress(s)))) => latest[i] = s,
            Ok((i, Some(ChildMsg::Ready))) => ready[i] = true,
            Ok((i, Some(ChildMsg::Report(r)))) => reports[i] = Some(*r),
            Ok((_, None)) => exited += 1,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
        if go.is_none() && ready.iter().all(|r| *r) {
            for (_, stdin) in &mut children {
                let _ = stdin.write_all(b"go\n").and_then(|()| stdin.flush());
            }
            if let Some(s) = sampler.as_mut() {
                s.mark_go();
            }
            go = Some(Instant::now());
        }
        if let (Some(g), false) = (go, ended) {
            if g.elapsed() >= duration {
                if let Some(s) = sampler.as_mut() {
                    s.mark_end();
                }
                ended = true;
            }
        }
        if let Some(s) = sampler.as_mut() {
            s.sample();
        }
        let mut all = Snapshot::default();
        for s in &latest {
            all.add(s);
        }
        let phase = match (go, ended) {
            (None, _) => "connecting",
            (Some(_), false) => "running",
            (Some(_), true) => "draining",
        };
        timeline.record(&all, phase, sampler.as_mut(), false);
        if last_line.elapsed() >= Duration::from_secs(1) && !plan.opts.quiet {
            eprintln!(
                "{}",
                all.line(
                    &prev,
                    last_line.elapsed().as_secs_f64(),
                    started.elapsed().as_secs_f64(),
                    phase
                )
            );
            prev = all;
            last_line = Instant::now();
        }
    }
    for (mut child, stdin) in children {
        drop(stdin);
        let _ = child.wait();
    }
    let mut merged: Option<Report> = None;
    for (i, r) in reports.into_iter().enumerate() {
        let r = r.ok_or_else(|| {
            format!("worker {i} exited without a report (see its messages above)")
        })?;
        match merged.as_mut() {
            Some(m) => m.merge(&r),
            None => merged = Some(r),
        }
    }
    let mut report = merged.ok_or("no workers")?;
    let mut all = Snapshot::default();
    for s in &latest {
        all.add(s);
    }
    timeline.record(&all, "draining", sampler.as_mut(), true);
    report.timeline = timeline.points;
    report.offered_per_sec = plan.offered_per_sec();
    report.settings = serde_json::to_value(&plan.opts).unwrap_or_default();
    apply_expected(&mut report, plan);
    report.target = sampler.map(|s| s.report(report.connect.connected));
    report.finish(plan.opts.qos);
    Ok(report)
}
