//! The `apiary` command.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use apiary::config::Config;
use apiary::server::{self, Options};

/// Apiary: a clustered MQTT broker configured by HiveMQ's config.xml.
#[derive(Parser, Debug)]
#[command(name = "apiary", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Runs the broker (the default when no command is given).
    Run(RunArgs),
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(clap::Args, Debug, Default)]
struct RunArgs {
    /// The config.xml to use [default: conf/config.xml if it exists, else built-in defaults].
    #[arg(long, env = "APIARY_CONFIG")]
    config: Option<PathBuf>,
    /// The data folder.
    #[arg(long, env = "APIARY_DATA_DIR", default_value = "data")]
    data_dir: PathBuf,
    /// The extensions folder.
    #[arg(long, env = "APIARY_EXTENSIONS_DIR", default_value = "extensions")]
    extensions_dir: PathBuf,
    /// Where extensions' compiled code is cached [default: extension-cache in the data folder].
    #[arg(long, env = "APIARY_EXTENSION_CACHE_DIR")]
    extension_cache_dir: Option<PathBuf>,
    /// Start a clustered node on the data in its folder as it is: the first node of a cluster
    /// restarted after a shutdown (the last one that stopped). Without it, a clustered node
    /// moves its previous data to cluster-backup/ in the data folder and takes its data from
    /// the cluster. Start only one node of a cluster this way.
    #[arg(long)]
    recovery: bool,
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validates a config.xml and prints the effective configuration.
    Check { file: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("APIARY_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let result = match cli.command {
        Some(Command::Config {
            command: ConfigCommand::Check { file },
        }) => check(&file),
        Some(Command::Run(args)) => run(args),
        None => run(RunArgs::parse_from_env()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

impl RunArgs {
    /// The defaults, with the environment variables applied (no flags were given).
    fn parse_from_env() -> RunArgs {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        Only::parse_from(["apiary"]).args
    }
}

fn check(file: &Path) -> anyhow::Result<()> {
    let config = Config::from_file(file)?;
    println!("{}", config.to_pretty_json());
    println!("{} is valid", file.display());
    Ok(())
}

fn load_config(path: Option<&Path>) -> anyhow::Result<Config> {
    match path {
        Some(p) => Ok(Config::from_file(p)?),
        None => {
            let default = Path::new("conf/config.xml");
            if default.exists() {
                Ok(Config::from_file(default)?)
            } else {
                tracing::info!("no conf/config.xml here, using the default configuration");
                Ok(Config::default())
            }
        }
    }
}

fn run(args: RunArgs) -> anyhow::Result<()> {
    let config = load_config(args.config.as_deref())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let running = server::start(Options {
            config,
            data_dir: args.data_dir,
            extensions_dir: args.extensions_dir,
            extension_cache_dir: args.extension_cache_dir,
            extension_policy: Default::default(),
            recovery: args.recovery,
        })
        .await?;
        running.run_until_signal().await
    })
}
