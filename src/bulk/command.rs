//! The `clipserve embed` command line: its flags, and the start-up that picks the backend
//! (a server's URL, or the model folder from the settings loaded in-process), installs the
//! Ctrl-C handler, runs [`super::run`] and prints the summary.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Context;

use super::{Backend, Format, Kind, LocalBackend, Options, ProgressMode, RemoteBackend};
use crate::config::Settings;
use crate::service::InputRules;

/// Flags of `clipserve embed`.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("input").required(true).args(["images", "texts"])))]
pub struct EmbedArgs {
    /// A folder of images, embedded recursively (jpg, jpeg, png, gif, webp, bmp, tif, tiff).
    #[arg(long, value_name = "DIR")]
    pub images: Option<PathBuf>,
    /// A UTF-8 text file, one text per line (blank lines are ignored).
    #[arg(long, value_name = "FILE")]
    pub texts: Option<PathBuf>,
    /// Output file: .jsonl (one {"path"|"text", "embedding"} a line) or .npy (float32 [N, D],
    /// with item names in <name>.names.txt). An existing output is resumed.
    #[arg(long, short, value_name = "FILE")]
    pub output: PathBuf,
    /// Output format, if the extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Embed through a running clipserve (e.g. http://127.0.0.1:8080) instead of loading
    /// the model (--model) in this process.
    #[arg(long, value_name = "URL")]
    pub server: Option<String>,
    /// The server's API key (sent as a bearer token). Default: the setting `server.api_key`,
    /// so the variable `CLIPSERVE_API_KEY` (or `CLIPSERVE_SERVER_API_KEY`) that protects a
    /// server also lets `embed --server` call it.
    #[arg(long)]
    pub api_key: Option<String>,
    /// Items per batch (per request with --server). Default: 16 images or 64 texts.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub batch_size: Option<u32>,
    /// Batches in flight at once.
    #[arg(long, value_name = "N", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub in_flight: u32,
    /// Try at most N items not yet in the output in this run (the next run continues).
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Progress display on stderr.
    #[arg(long, value_enum, default_value_t = ProgressMode::Auto, env = "CLIPSERVE_PROGRESS")]
    pub progress: ProgressMode,
}

/// Runs `clipserve embed`. Exits with status 130 after an interruption (the output is valid
/// and the same command resumes it).
pub fn execute(args: EmbedArgs, settings: Settings) -> anyhow::Result<()> {
    let (kind, input) = match (args.images, args.texts) {
        (Some(dir), None) => (Kind::Images, dir),
        (None, Some(file)) => (Kind::Texts, file),
        _ => anyhow::bail!("give exactly one of --images DIR and --texts FILE"),
    };
    let format = match args.format.or_else(|| Format::from_path(&args.output)) {
        Some(f) => f,
        None => anyhow::bail!(
            "{}: name the output .jsonl or .npy, or pass --format",
            args.output.display()
        ),
    };
    let options = Options {
        kind,
        input,
        output: args.output,
        format,
        batch_size: args.batch_size.map_or(
            match kind {
                Kind::Images => 16,
                Kind::Texts => 64,
            },
            |n| n as usize,
        ),
        in_flight: args.in_flight as usize,
        limit: args.limit,
        progress: args.progress,
    };
    // stderr is for progress: model loading logs only warnings, except the hub's download
    // (a first start fetches about 1.5 GB, which must not look like a hang).
    let mut log = settings.log.clone();
    log.level = "warn,clipserve::hub=info".into();
    crate::telemetry::init_tracing_stderr(&log);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let summary = runtime.block_on(async {
        let backend = match &args.server {
            Some(url) => {
                let key = args
                    .api_key
                    .clone()
                    .map(crate::config::Secret::from)
                    .or_else(|| settings.server.api_key.clone());
                Backend::Remote(RemoteBackend::connect(url, key).await?)
            }
            None => Backend::Local(load_local(&settings).await?),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("interrupted: finishing the batches in flight (Ctrl-C again to quit now)");
                flag.store(true, Ordering::Relaxed);
                if tokio::signal::ctrl_c().await.is_ok() {
                    std::process::exit(130);
                }
            }
        });
        let summary = super::run(&options, &backend, &stop).await.with_context(|| {
            format!(
                "embedding stopped; {} holds everything embedded so far and the same command resumes it",
                options.output.display()
            )
        })?;
        anyhow::Ok(summary)
    })?;
    print!("{}", summary.render(kind, &options.output));
    if summary.interrupted {
        std::process::exit(130);
    }
    Ok(())
}

async fn load_local(settings: &Settings) -> anyhow::Result<LocalBackend> {
    let folder = crate::app::resolve_model(settings).await?;
    eprintln!("loading model {}", folder.display());
    let engine_settings = crate::service::engine_settings(&settings.model);
    let engine =
        tokio::task::spawn_blocking(move || crate::engine::Engine::load(&folder, &engine_settings))
            .await
            .context("the model loading task failed")?
            .context("loading the model")?;
    Ok(LocalBackend::new(
        Arc::new(engine),
        InputRules::new(&settings.limits, &settings.model),
    ))
}
