//! `tether-bench` command line entry point.

use std::process::ExitCode;

use clap::Parser;

/// The gateway's allocator, for the same reason: with `override`, it is
/// librdkafka's malloc too, so `kafka flood` (the direct producer Tether
/// is compared with) runs on the allocator Tether runs on.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;
use tether_bench::cli::{Cli, Opts, RenderOpts, Scenario};
use tether_bench::procs::{WorkerSpec, WORKER_ENV};
use tether_bench::report::Report;
use tether_bench::Plan;

fn main() -> ExitCode {
    let (name, opts): (String, Opts) = match std::env::var(WORKER_ENV) {
        Ok(spec) => match serde_json::from_str::<WorkerSpec>(&spec) {
            Ok(w) => (w.scenario, w.opts),
            Err(e) => {
                eprintln!("tether-bench: bad {WORKER_ENV}: {e}");
                return ExitCode::from(1);
            }
        },
        Err(_) => {
            let cli = Cli::parse();
            match cli.scenario {
                Scenario::Kafka(cmd) => return tether_bench::kafka::run(cmd),
                Scenario::Render(r) => return render(&r),
                Scenario::Visibility(v) => return tether_bench::visibility::run(v),
                _ => {}
            }
            let (name, opts) = cli.scenario.parts().expect("an MQTT scenario");
            (name.to_string(), opts.clone())
        }
    };
    let worker = opts.worker.is_some();
    let name: &'static str = Box::leak(name.into_boxed_str());
    let plan = match Plan::new(name, &opts) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tether-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if !worker {
        check_fd_limit(&plan);
        eprintln!(
            "tether-bench {name}: {} clients against {} (MQTT {}, QoS {}, {} B payloads), {} process(es)",
            plan.total(),
            plan.addr,
            opts.version,
            opts.qos,
            opts.size,
            opts.procs
        );
    }
    let report = match tether_bench::run(plan) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tether-bench: {e}");
            return ExitCode::from(1);
        }
    };
    if worker {
        return ExitCode::SUCCESS;
    }
    print!("{}", report.summary());
    if let Some(path) = &opts.json {
        let json = serde_json::to_string_pretty(&report).expect("serialisable");
        if let Err(e) = std::fs::write(path, json) {
            eprintln!("tether-bench: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
    }
    if let Some(path) = &opts.report {
        let title = format!("tether-bench {name} against {}", report.broker);
        if let Err(e) = std::fs::write(path, tether_bench::html::render_run(&title, &report)) {
            eprintln!("tether-bench: writing {}: {e}", path.display());
            return ExitCode::from(1);
        }
        eprintln!("report: {}", path.display());
    }
    if !report.violations.is_empty() {
        ExitCode::from(2)
    } else if report.connect.failed > 0 {
        ExitCode::from(3)
    } else {
        ExitCode::SUCCESS
    }
}

/// `tether-bench render`: `--json` reports to one HTML page.
fn render(r: &RenderOpts) -> ExitCode {
    let mut runs = Vec::with_capacity(r.reports.len());
    for arg in &r.reports {
        let (label, path) = match arg.split_once('=') {
            Some((l, p)) => (l.to_string(), p.to_string()),
            None => (
                std::path::Path::new(arg)
                    .file_stem()
                    .map_or(arg.clone(), |s| s.to_string_lossy().into_owned()),
                arg.clone(),
            ),
        };
        let report = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|s| serde_json::from_str::<Report>(&s).map_err(|e| e.to_string()))
        {
            Ok(rep) => rep,
            Err(e) => {
                eprintln!("tether-bench render: {path}: {e}");
                return ExitCode::from(1);
            }
        };
        runs.push((label, report));
    }
    let page = if runs.len() == 1 {
        tether_bench::html::render_run(&r.title, &runs[0].1)
    } else {
        tether_bench::html::render_compare(&r.title, &runs)
    };
    if let Err(e) = std::fs::write(&r.out, page) {
        eprintln!("tether-bench render: writing {}: {e}", r.out.display());
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}

/// Warns, with the fix, when one process cannot hold its share of sockets.
fn check_fd_limit(plan: &Plan) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the local struct.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    let per_proc = u64::from(plan.total()).div_ceil(plan.opts.procs as u64);
    // Raise the soft limit to the hard one: the default soft 1024 is the
    // most common reason a harness "fails" at 1,000 connections.
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the local struct.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    if per_proc + 64 > lim.rlim_cur {
        let need = per_proc.div_ceil(lim.rlim_cur.saturating_sub(64).max(1));
        eprintln!(
            "tether-bench: warning: {per_proc} sockets per process but the open-file limit is {}; \
             raise it (ulimit -n, LimitNOFILE) or use --procs {}",
            lim.rlim_cur,
            plan.opts.procs as u64 * need.max(2)
        );
    }
}
