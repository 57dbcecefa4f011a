//! `apiary-bench`: runs the performance scenarios against one or more brokers and prints them side
//! by side (see `README.md`, "Performance", and `scripts/bench.sh`, which runs the comparison with
//! mosquitto).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use apiary::bench::{self, RunArgs, conns::WorkerArgs, report::Report};

/// Load generator comparing MQTT brokers (Apiary vs mosquitto).
#[derive(Parser, Debug)]
#[command(name = "apiary-bench", version, about, args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: Option<RunArgs>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Merges JSON results of earlier runs and prints one table.
    Report {
        /// JSON files written with --json.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Also write the merged results here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Internal: holds connections for scenarios 4 and 5 (driven over stdin/stdout).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Report { files, json }) => report(&files, json),
        Some(Command::Worker(args)) => runtime(Some(1)).and_then(|rt| rt.block_on(bench::conns::worker(args))),
        None => match cli.run {
            Some(args) => run(&args),
            None => Err(anyhow::anyhow!(
                "give at least one --target NAME=HOST:PORT (see --help)"
            )),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime(threads: Option<usize>) -> anyhow::Result<tokio::runtime::Runtime> {
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = threads {
        b.worker_threads(n);
    }
    Ok(b.enable_all().build()?)
}

fn run(args: &RunArgs) -> anyhow::Result<()> {
    let report = runtime(None)?.block_on(bench::run(args))?;
    print!("{}", report.table());
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)?;
    }
    let failed: Vec<String> = report
        .targets
        .iter()
        .flat_map(|t| {
            t.figures
                .iter()
                .filter(|f| f.error.is_some())
                .map(|f| format!("{}: {}", t.name, f.key))
        })
        .collect();
    anyhow::ensure!(failed.is_empty(), "some measurements failed: {}", failed.join(", "));
    Ok(())
}

fn report(files: &[PathBuf], json: Option<PathBuf>) -> anyhow::Result<()> {
    let mut merged = Report::default();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?;
        merged.merge(serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", f.display()))?);
    }
    print!("{}", merged.table());
    if let Some(path) = json {
        std::fs::write(path, serde_json::to_string_pretty(&merged)?)?;
    }
    Ok(())
}
