//! Configuration of `coordinator train`: flags, environment variables (`CARRY_*`), a TOML file
//! (`--config`), defaults, in that order of precedence (layered by [`runtime::config`]); parsed
//! into a plain [`TrainConfig`] whose `validate` errors name the field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use model::config::{AdamConfig, Compat, Head, ModelConfig, ResetPolicy, TrainSpec, ValState};
use model::device::DeviceChoice;
use model::engine::EngineKind;
use runtime::config::parse_named;
use serde::Deserialize;

use crate::error::CoordError;
use crate::job::{DeadlinePolicy, JobConfig};

/// A boolean flag that may be given bare (`--linger`) or with a value (`--linger false`).
macro_rules! boolish {
    () => {
        clap::builder::BoolishValueParser::new()
    };
}

/// Options of `coordinator train`, each from a flag, an environment variable or the TOML file.
#[derive(Debug, Clone, Default, Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TrainArgs {
    /// TOML file with any of these options (keys as flag names with `_`).
    #[arg(long, env = "CARRY_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
    /// Print the resolved configuration and exit.
    #[arg(long, env = "CARRY_DRY_RUN", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    #[serde(skip)]
    pub dry_run: Option<bool>,

    /// `synthetic` (built-in trajectories), an .npz file with x, y [, x_val, y_val, cond,
    /// cond_val], or series in long format: .csv, .csv.gz, .parquet, or a ragged .npz (x rows of
    /// all series concatenated plus `lengths`).
    #[arg(long, env = "CARRY_DATA")]
    pub data: Option<String>,
    /// Series data: the column naming each series [default: the whole file is one series].
    #[arg(long, env = "CARRY_ID_COLUMN")]
    pub id_column: Option<String>,
    /// Series data: the column ordering each series' rows, ISO dates or numbers, strictly
    /// increasing within a series [default: file order].
    #[arg(long, env = "CARRY_TIME_COLUMN")]
    pub time_column: Option<String>,
    /// Series data: input columns, comma-separated [default: every value column].
    #[arg(long, env = "CARRY_INPUT_COLUMNS", value_delimiter = ',')]
    pub input_columns: Option<Vec<String>>,
    /// Series data: target columns; the target at step t is their value at step t+1 [default:
    /// the input columns].
    #[arg(long, env = "CARRY_TARGET_COLUMNS", value_delimiter = ',')]
    pub target_columns: Option<Vec<String>>,
    /// Series data: scale each series by its own statistics, all by global ones, or not at all;
    /// statistics come from the training part [default: series].
    #[arg(long, env = "CARRY_SCALE", value_enum)]
    pub scale: Option<data::series::Scale>,
    /// Series data: hold out the last K steps of every series for validation [default: 0].
    #[arg(long, env = "CARRY_VAL_STEPS")]
    pub val_steps: Option<usize>,
    /// Series data: take series longest first, in a seeded random order per epoch among series of
    /// as many chunks; false takes them in file order [default: true].
    #[arg(long, env = "CARRY_SHUFFLE_SERIES", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub shuffle_series: Option<bool>,
    /// Series data: what a missing value cell (empty, NA, NaN, a Parquet null) does: mask
    /// (missing targets add nothing to the loss, missing inputs are filled with the last
    /// observation and flagged) or error [default: mask].
    #[arg(long, env = "CARRY_MISSING", value_enum)]
    pub missing: Option<data::series::MissingPolicy>,
    /// Series data: columns known up to each step's time, comma-separated: inputs only (not
    /// predicted, not fed back); over a forecast's horizon they are unknown, so their last value
    /// is carried (flagged as not observed when the model has observed flags).
    #[arg(long, env = "CARRY_PAST_COVARIATES", value_delimiter = ',')]
    pub past_covariates: Option<Vec<String>>,
    /// Series data: columns known ahead (planned prices, holidays), comma-separated: the model
    /// sees each one's value at the time it predicts, and a forecast needs them for the
    /// horizon's rows.
    #[arg(long, env = "CARRY_FUTURE_COVARIATES", value_delimiter = ',')]
    pub future_covariates: Option<Vec<String>>,
    /// Series data: calendar features of the time column, each as its sin and cos, comma-separated:
    /// dow (day of week), dom (day of month), doy (day of year), month, hour (needs date-times).
    #[arg(long, env = "CARRY_CALENDAR", value_delimiter = ',', value_enum)]
    pub calendar: Option<Vec<data::series::Calendar>>,
    /// Series data: quantile levels to forecast, comma-separated (e.g. 0.1,0.5,0.9): one output
    /// per level per target, trained with the pinball loss; forecasts write one column per level
    /// [default: point forecasts].
    #[arg(long, env = "CARRY_QUANTILES", value_delimiter = ',')]
    pub quantiles: Option<Vec<f32>>,
    /// Loss per output: mse, mae or huber [default: mse].
    #[arg(long, env = "CARRY_LOSS", value_enum)]
    pub loss: Option<model::config::LossKind>,
    /// Where the Huber loss turns linear [default: 1.0].
    #[arg(long, env = "CARRY_HUBER_DELTA")]
    pub huber_delta: Option<f64>,
    /// Learning-rate schedule after the warm-up: constant, cosine (to 0 at the last step) or
    /// step (times --lr-gamma every --lr-step-epochs epochs) [default: constant].
    #[arg(long, env = "CARRY_LR_SCHEDULE", value_enum)]
    pub lr_schedule: Option<model::config::LrSchedule>,
    /// Steps of linear learning-rate warm-up [default: 0].
    #[arg(long, env = "CARRY_WARMUP_STEPS")]
    pub warmup_steps: Option<u64>,
    /// Factor of the step schedule [default: 0.5].
    #[arg(long, env = "CARRY_LR_GAMMA")]
    pub lr_gamma: Option<f64>,
    /// Epochs between decays of the step schedule [default: 1].
    #[arg(long, env = "CARRY_LR_STEP_EPOCHS")]
    pub lr_step_epochs: Option<u64>,
    /// Stop when the validation loss has not improved for N epochs; the best epoch's weights are
    /// kept in best.safetensors beside the last [default: no early stopping].
    #[arg(long, env = "CARRY_PATIENCE")]
    pub patience: Option<u64>,
    /// Synthetic training sequences [default: 2000].
    #[arg(long, env = "CARRY_SEQUENCES")]
    pub sequences: Option<usize>,
    /// Synthetic validation sequences, 0 for none [default: 400, or one batch if larger].
    #[arg(long, env = "CARRY_VAL_SEQUENCES")]
    pub val_sequences: Option<usize>,
    /// Time steps per sequence for flat data and synthetic data [default: 96].
    #[arg(long, env = "CARRY_TIMESTEPS")]
    pub timesteps: Option<usize>,
    /// Input features per step for flat data [default: 2].
    #[arg(long, env = "CARRY_FEATURES")]
    pub features: Option<usize>,
    /// Most memory, in MiB, the arrays of an .npz may need; larger data is refused before it is
    /// decompressed [default: the memory available].
    #[arg(long, env = "CARRY_MAX_DATA_MB")]
    pub max_data_mb: Option<u64>,

    /// Epochs [default: 10].
    #[arg(long, env = "CARRY_EPOCHS")]
    pub epochs: Option<u64>,
    /// Stop after this many steps in total (default: all epochs).
    #[arg(long, env = "CARRY_STEPS")]
    pub steps: Option<u64>,
    /// Global batch size B: parallel streams [default: 10; series data: the number of series,
    /// at most 64].
    #[arg(long, env = "CARRY_BATCH_SIZE")]
    pub batch_size: Option<usize>,
    /// LSTM units per layer [default: 8].
    #[arg(long, env = "CARRY_HIDDEN")]
    pub hidden: Option<usize>,
    /// Stacked LSTM layers [default: 2].
    #[arg(long, env = "CARRY_LAYERS")]
    pub layers: Option<usize>,
    /// Dropout on the last LSTM layer's outputs [default: 0.2; series data: 0].
    #[arg(long, env = "CARRY_DROPOUT")]
    pub dropout: Option<f32>,
    /// Head activation [default: linear].
    #[arg(long, env = "CARRY_HEAD", value_enum)]
    pub head: Option<Head>,
    /// Adam learning rate [default: 0.001].
    #[arg(long, env = "CARRY_LR")]
    pub lr: Option<f64>,
    /// Adam beta1 [default: 0.9].
    #[arg(long, env = "CARRY_BETA1")]
    pub beta1: Option<f64>,
    /// Adam beta2 [default: 0.999].
    #[arg(long, env = "CARRY_BETA2")]
    pub beta2: Option<f64>,
    /// Adam epsilon [default: 1e-7].
    #[arg(long, env = "CARRY_EPSILON")]
    pub epsilon: Option<f64>,
    /// Clip the whole batch's gradient to this global L2 norm (torch `clip_grad_norm_`, Keras
    /// `global_clipnorm`) [default: no clipping].
    #[arg(long, env = "CARRY_CLIP_NORM")]
    pub clip_norm: Option<f64>,
    /// Whose training rules to follow step for step: keras (one bias per LSTM layer, Keras' Adam)
    /// or torch (both biases, PyTorch's Adam) [default: keras].
    #[arg(long, env = "CARRY_COMPAT", value_enum)]
    pub compat: Option<Compat>,
    /// Start from these weights with a fresh optimizer: PyTorch-layout safetensors (what
    /// `export` writes), a checkpoint or run directory, or Keras 3 weights (.weights.h5, .keras).
    /// Sizes come from the file.
    #[arg(long, env = "CARRY_INIT_FROM")]
    pub init_from: Option<PathBuf>,
    /// Seed for initialization, dropout masks and synthetic data [default: 42].
    #[arg(long, env = "CARRY_SEED")]
    pub seed: Option<u64>,
    /// State resets: never, epoch or every:K [default: epoch].
    #[arg(long, env = "CARRY_RESET_STATES", value_parser = parse_named::<ResetPolicy>("reset_states"))]
    pub reset_states: Option<ResetPolicy>,
    /// Validation start state: carry (final training state) or zero [default: carry].
    #[arg(long, env = "CARRY_VAL_STATE", value_enum)]
    pub val_state: Option<ValState>,
    /// Learn a projection from each sequence's `cond` vector to the initial (h, c) at resets.
    #[arg(long, env = "CARRY_INIT_FROM_COND", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub init_from_cond: Option<bool>,
    /// Start the first step from these states: an .npz with `h` and `c`, each [layers, B, H] (what
    /// `predict` writes); the reset policy applies from the second step on.
    #[arg(long, env = "CARRY_INITIAL_STATE")]
    pub initial_state: Option<PathBuf>,

    /// gRPC address to serve on; port 0 picks a free port [default: 127.0.0.1:50051].
    #[arg(long, env = "CARRY_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Extra plaintext port serving only the gRPC health service (for kubelet probes).
    #[arg(long, env = "CARRY_HEALTH_LISTEN")]
    pub health_listen: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address.
    #[arg(long, env = "CARRY_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
    /// Serve the live status page (and /api/status) over HTTP on this address; behind the token
    /// when there is one.
    #[arg(long, env = "CARRY_UI_LISTEN")]
    pub ui_listen: Option<SocketAddr>,
    /// Workers to wait for before the first step [default: spawn-workers, else 1].
    #[arg(long, env = "CARRY_WORKERS")]
    pub workers: Option<usize>,
    /// Most workers at once; more registrations are refused [default: 256].
    #[arg(long, env = "CARRY_MAX_WORKERS")]
    pub max_workers: Option<usize>,
    /// Launch K local worker processes; 0 trains in this process (the reference trainer).
    #[arg(long, env = "CARRY_SPAWN_WORKERS")]
    pub spawn_workers: Option<usize>,
    /// Extra arguments for spawned workers, e.g. "--device wgpu".
    #[arg(long, env = "CARRY_WORKER_ARGS", allow_hyphen_values = true)]
    pub worker_args: Option<String>,
    /// Run directory: checkpoints, metrics.csv, loss plot [default: a new runs/<date>-<time>,
    /// linked as runs/latest].
    #[arg(long, env = "CARRY_OUT")]
    pub out: Option<PathBuf>,
    /// Resume from the checkpoint in this run directory (or file).
    #[arg(long, env = "CARRY_RESUME")]
    pub resume: Option<PathBuf>,
    /// Resume from --out when it holds a checkpoint, else start fresh (for restarts under Kubernetes).
    #[arg(long, env = "CARRY_AUTO_RESUME", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub auto_resume: Option<bool>,
    /// Replace the run in --out instead of refusing to touch it.
    #[arg(long, env = "CARRY_OVERWRITE", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub overwrite: Option<bool>,
    /// Keep serving (health, status) after the job ends, until SIGTERM.
    #[arg(long, env = "CARRY_LINGER", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub linger: Option<bool>,
    /// Checkpoint every K steps (and at the end) [default: 50].
    #[arg(long, env = "CARRY_CHECKPOINT_EVERY")]
    pub checkpoint_every: Option<u64>,
    /// Worker lease in milliseconds: a worker silent this long is dead [default: 3000].
    #[arg(long, env = "CARRY_LEASE_MS")]
    pub lease_ms: Option<u64>,
    /// Milliseconds a worker has for a shard before it is also given to another worker
    /// [default: adaptive, 5x the usual shard time, at least --deadline-floor-ms].
    #[arg(long, env = "CARRY_SHARD_DEADLINE_MS")]
    pub shard_deadline_ms: Option<u64>,
    /// Least time of the adaptive shard deadline, in milliseconds [default: 30000].
    #[arg(long, env = "CARRY_DEADLINE_FLOOR_MS")]
    pub deadline_floor_ms: Option<u64>,
    /// Missed deadlines after which a worker is evicted [default: 3].
    #[arg(long, env = "CARRY_MAX_DEADLINE_MISSES")]
    pub max_deadline_misses: Option<u32>,
    /// Refused results (or reported failures) after which a worker is evicted [default: 3].
    #[arg(long, env = "CARRY_MAX_REFUSALS")]
    pub max_refusals: Option<u32>,
    /// Milliseconds an evicted worker waits before it may register again; doubles with each
    /// eviction [default: 5000].
    #[arg(long, env = "CARRY_EVICT_BACKOFF_MS")]
    pub evict_backoff_ms: Option<u64>,
    /// Fraction of shard results the coordinator recomputes and compares [default: 0].
    #[arg(long, env = "CARRY_VERIFY_FRACTION")]
    pub verify_fraction: Option<f64>,
    /// Steps of work handed to the workers past the last committed one, so that they never wait
    /// for the coordinator between steps; a fault recomputes at most this many [default: 16].
    #[arg(long, env = "CARRY_PIPELINE_DEPTH")]
    pub pipeline_depth: Option<usize>,
    /// Benchmark aid (scripts/simulate.sh): workers sleep this many milliseconds per slot
    /// instead of computing, and report a zero gradient and unchanged states; everything else
    /// (views, the gradient sum among workers, updates, commits) runs for real [default: off].
    #[arg(long, env = "CARRY_SIMULATE_MS_PER_SLOT", hide = true)]
    pub simulate_ms_per_slot: Option<f64>,
    /// Benchmark aid (scripts/simulate.sh): hold every report this many microseconds before it
    /// is handled, as a network link's delay would [default: 0].
    #[arg(long, env = "CARRY_LINK_DELAY_US", hide = true)]
    pub link_delay_us: Option<u64>,
    /// Device for in-process training and for spawned workers: auto (a GPU through wgpu if there
    /// is one, else the CPU), wgpu, vulkan, metal, dx12, cpu [default: auto].
    #[arg(long, env = "CARRY_DEVICE", value_enum)]
    pub device: Option<DeviceChoice>,
    /// Engine [default: fused].
    #[arg(long, env = "CARRY_ENGINE", value_enum)]
    pub engine: Option<EngineKind>,
    /// CPU threads for in-process training (0 = all cores) [default: 0].
    #[arg(long, env = "CARRY_THREADS")]
    pub threads: Option<usize>,
    /// Shared token every worker must present (at least 16 bytes; make one with
    /// `openssl rand -hex 32`).
    #[arg(long, env = "CARRY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// File holding the shared token.
    #[arg(long, env = "CARRY_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// TLS certificate (PEM).
    #[arg(long, env = "CARRY_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "CARRY_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// CA (PEM) that worker client certificates must chain to (mutual TLS).
    #[arg(long, env = "CARRY_TLS_CLIENT_CA")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback listen address without a token or mutual TLS.
    #[arg(long, env = "CARRY_INSECURE", num_args = 0..=1, default_missing_value = "true", value_parser = boolish!())]
    pub insecure: Option<bool>,
    /// Largest gRPC message, in MiB; larger tensors travel in chunks [default: 64].
    #[arg(long, env = "CARRY_MAX_MESSAGE_MB")]
    pub max_message_mb: Option<usize>,
    /// Progress display: auto (bar on a terminal, log lines otherwise), bar, log, off [default: auto].
    #[arg(long, env = "CARRY_PROGRESS", value_enum)]
    pub progress: Option<Progress>,
    /// Seconds between progress log lines (without a bar) [default: 5].
    #[arg(long, env = "CARRY_PROGRESS_EVERY")]
    pub progress_every: Option<f64>,
}

impl TrainArgs {
    /// Fills every option not given by a flag or environment variable from `file`.
    pub(crate) fn fill_from(&mut self, mut file: TrainArgs) {
        runtime::fill_from!(self, file; data, id_column, time_column, input_columns,
            target_columns, scale, val_steps, shuffle_series, missing, past_covariates,
            future_covariates, calendar, quantiles, loss, huber_delta, lr_schedule,
            warmup_steps, lr_gamma, lr_step_epochs, patience, sequences, val_sequences, timesteps, features,
            max_data_mb, epochs, steps, batch_size, hidden, layers, dropout, head, lr, beta1, beta2,
            epsilon, clip_norm, compat, init_from, seed, reset_states, val_state, init_from_cond, initial_state, listen,
            health_listen, metrics_listen, ui_listen, workers, max_workers, spawn_workers, worker_args, out,
            resume, auto_resume, overwrite, linger, checkpoint_every, lease_ms, shard_deadline_ms,
            deadline_floor_ms, max_deadline_misses, max_refusals, evict_backoff_ms,
            verify_fraction, pipeline_depth, simulate_ms_per_slot, link_delay_us, device, engine,
            threads, token,
            token_file, tls_cert, tls_key,
            tls_client_ca, insecure, max_message_mb, progress, progress_every);
    }

    /// Reads `--config` (if any) and applies precedence: flags > env > TOML > defaults.
    pub(crate) fn with_file(mut self) -> Result<Self, CoordError> {
        if let Some(path) = self.config.clone() {
            let file: TrainArgs = runtime::config::load_toml(&path)?;
            self.fill_from(file);
        }
        Ok(self)
    }
}

/// Where training data comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DataSource {
    /// The built-in generator.
    Synthetic,
    /// An `.npz` file of equal windows.
    Npz(PathBuf),
    /// A table of series (`.csv`, `.csv.gz`, `.parquet`, ragged `.npz`).
    Table(PathBuf),
}

/// Whether `path` names a table of series: by extension, or an `.npz` holding `lengths`.
pub(crate) fn is_table(path: &std::path::Path) -> bool {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".csv") || name.ends_with(".csv.gz") || name.ends_with(".parquet") {
        return true;
    }
    name.ends_with(".npz") && data::npy::npz_has(path, "lengths")
}

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Progress {
    /// A bar on a terminal, log lines otherwise.
    Auto,
    /// Always a bar.
    Bar,
    /// Periodic log lines.
    Log,
    /// Nothing beyond the start and end.
    Off,
}

/// TLS files of the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
    /// CA for client certificates (mutual TLS).
    pub client_ca: Option<PathBuf>,
}

/// Model options given explicitly, as opposed to defaulted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct GivenShape {
    /// `--hidden`.
    pub hidden: Option<usize>,
    /// `--layers`.
    pub layers: Option<usize>,
    /// `--head`.
    pub head: Option<Head>,
}

/// Where the run directory comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OutDir {
    /// Given with `--out`.
    Given(PathBuf),
    /// A new directory of its own under `runs/`, linked as `runs/latest`.
    Fresh(PathBuf),
}

impl OutDir {
    /// The directory.
    pub(crate) fn path(&self) -> &std::path::Path {
        match self {
            Self::Given(p) | Self::Fresh(p) => p,
        }
    }
}

/// The resolved configuration of a training job.
#[derive(Debug, Clone)]
pub(crate) struct TrainConfig {
    /// Data source.
    pub data: DataSource,
    /// Synthetic training sequences.
    pub sequences: usize,
    /// Synthetic validation sequences.
    pub val_sequences: usize,
    /// Time steps (synthetic and flat data).
    pub timesteps: usize,
    /// Input features (flat data).
    pub features: usize,
    /// Ceiling on the memory the data may need, in bytes (`None`: what is available).
    pub max_data_bytes: Option<u64>,
    /// Model and optimization settings (input/output widths are filled from the data).
    pub spec: TrainSpec,
    /// The options of series data left to the series defaults ([`SeriesDefaults`]); the batch
    /// size and the epochs are fitted to the table once it is read
    /// ([`TrainConfig::fit_series_defaults`]).
    pub series_defaults: SeriesDefaults,
    /// Whether to learn the initial-state projection from `cond`.
    pub init_from_cond: bool,
    /// Epochs without a better validation loss before the run stops.
    pub patience: Option<u64>,
    /// States the first step starts from.
    pub initial_state: Option<PathBuf>,
    /// Weights the run starts from.
    pub init_from: Option<PathBuf>,
    /// The model options given explicitly (not defaults), checked against `init_from`'s sizes.
    pub given: GivenShape,
    /// gRPC address.
    pub listen: SocketAddr,
    /// Plaintext health-only address.
    pub health_listen: Option<SocketAddr>,
    /// Prometheus address.
    pub metrics_listen: Option<SocketAddr>,
    /// Live status page address.
    pub ui_listen: Option<SocketAddr>,
    /// The rules of the job: leases, limits, deadlines, evictions, verification.
    pub job: JobConfig,
    /// Local workers to launch; `Some(0)` trains in-process.
    pub spawn_workers: Option<usize>,
    /// Extra arguments for spawned workers.
    pub worker_args: Vec<String>,
    /// Run directory.
    pub out: OutDir,
    /// Checkpoint to resume from.
    pub resume: Option<PathBuf>,
    /// Resume from `out` when it holds a checkpoint.
    pub auto_resume: bool,
    /// Replace a run that `out` holds.
    pub overwrite: bool,
    /// Keep serving after the job ends.
    pub linger: bool,
    /// Checkpoint cadence in steps.
    pub checkpoint_every: u64,
    /// Device for in-process compute.
    pub device: DeviceChoice,
    /// Engine for in-process compute.
    pub engine: EngineKind,
    /// CPU threads for in-process compute.
    pub threads: usize,
    /// Shared token.
    pub token: Option<proto::security::Token>,
    /// TLS files.
    pub tls: Option<TlsFiles>,
    /// Allow an unprotected non-loopback address.
    pub insecure: bool,
    /// Largest message in bytes.
    pub max_message_bytes: usize,
    /// Progress display.
    pub progress: Progress,
    /// Time between progress log lines.
    pub progress_every: Duration,
    /// Benchmark aid: how long every report is held before it is handled.
    pub link_delay: runtime::net::LinkDelay,
}

/// Which options of a run on series data were not given and take the series defaults, which
/// differ from the windows defaults (the seed model's): a forecasting model is trained on the
/// whole panel of series at once, so an epoch is only a few steps and it needs more of them,
/// a larger step size, more units and no dropout.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SeriesDefaults {
    /// `--batch-size`: the number of series, at most [`SERIES_MAX_BATCH`].
    pub batch_size: bool,
    /// `--epochs`: about [`SERIES_STEP_BUDGET`] steps, within [`SERIES_EPOCHS`].
    pub epochs: bool,
    /// `--dropout`: [`SERIES_DROPOUT`].
    pub dropout: bool,
    /// `--hidden`: [`SERIES_HIDDEN`].
    pub hidden: bool,
    /// `--lr`: [`SERIES_LR`].
    pub lr: bool,
    /// `--loss`: Huber (robust to the outliers real series have; like squared error for the
    /// usual errors, which are under one standard deviation of the series), unless the head is
    /// softmax.
    pub loss: bool,
}

/// The most slots the default batch of series data has: up to it, every series of a table runs
/// in every step (one gradient step sees the whole panel, as forecasting libraries train);
/// past it, an epoch keeps several steps and a step's cost stops growing.
pub(crate) const SERIES_MAX_BATCH: usize = 64;

/// Synthetic validation sequences unless given (or one batch, if that is more).
const DEFAULT_VAL_SEQUENCES: usize = 400;
/// The dropout of series data: small recurrent forecasters are trained without it (it mostly
/// adds noise to their predictions); the windows default, 0.2, is the seed model's.
pub(crate) const SERIES_DROPOUT: f32 = 0.0;
/// The units per layer of series data: a panel of series needs more than the seed model's 8
/// (darts' recurrent models default to 25).
pub(crate) const SERIES_HIDDEN: usize = 32;
/// Adam's step size for series data: with the whole panel in a batch there are few steps, and
/// 1e-3 does not converge within the default epochs.
pub(crate) const SERIES_LR: f64 = 5e-3;
/// About how many steps a run on series data takes by default (forecasting libraries count
/// training in steps, neuralforecast's default being 1000): the default epochs are this many
/// steps over the steps of an epoch, ...
pub(crate) const SERIES_STEP_BUDGET: u64 = 1200;
/// ... at least and at most this many epochs.
pub(crate) const SERIES_EPOCHS: (u64, u64) = (10, 300);

/// A name for a fresh run directory: `runs/<YYYYmmdd-HHMMSS>` (UTC), with a suffix when taken.
fn fresh_run_dir() -> PathBuf {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // civil date from days since 1970-01-01 (Howard Hinnant's algorithm)
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let stamp = format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    );
    let base = PathBuf::from("runs");
    let mut p = base.join(&stamp);
    let mut n = 1;
    while p.exists() {
        n += 1;
        p = base.join(format!("{stamp}-{n}"));
    }
    p
}

impl TrainArgs {
    /// Resolves defaults and validates; errors name the field.
    pub(crate) fn resolve(self) -> Result<TrainConfig, CoordError> {
        let bad = |field: &str, msg: String| CoordError::Config {
            field: field.into(),
            msg,
        };
        let data = match self.data.as_deref() {
            None | Some("synthetic") => DataSource::Synthetic,
            Some("") => {
                return Err(bad(
                    "data",
                    "expected `synthetic` or a path to an .npz file, got an empty value".into(),
                ));
            }
            Some(p) if is_table(std::path::Path::new(p)) => DataSource::Table(PathBuf::from(p)),
            Some(p) => DataSource::Npz(PathBuf::from(p)),
        };
        let series = match &data {
            DataSource::Table(_) => Some(data::series::SeriesSpec {
                id_column: self.id_column.clone(),
                time_column: self.time_column.clone(),
                input_columns: self.input_columns.clone().unwrap_or_default(),
                target_columns: self.target_columns.clone().unwrap_or_default(),
                scale: self.scale.unwrap_or_default(),
                val_steps: self.val_steps.unwrap_or(0),
                shuffle: self.shuffle_series.unwrap_or(true),
                timesteps: self.timesteps.unwrap_or(96),
                missing: self.missing.unwrap_or_default(),
                observed_flags: false,
                past_covariates: self.past_covariates.clone().unwrap_or_default(),
                future_covariates: self.future_covariates.clone().unwrap_or_default(),
                calendar: self.calendar.clone().unwrap_or_default(),
            }),
            _ => {
                let given = [
                    ("id_column", self.id_column.is_some()),
                    ("time_column", self.time_column.is_some()),
                    ("input_columns", self.input_columns.is_some()),
                    ("target_columns", self.target_columns.is_some()),
                    ("scale", self.scale.is_some()),
                    ("val_steps", self.val_steps.is_some()),
                    ("shuffle_series", self.shuffle_series.is_some()),
                    ("missing", self.missing.is_some()),
                    ("past_covariates", self.past_covariates.is_some()),
                    ("future_covariates", self.future_covariates.is_some()),
                    ("calendar", self.calendar.is_some()),
                    ("quantiles", self.quantiles.is_some()),
                ];
                if let Some((f, _)) = given.iter().find(|g| g.1) {
                    return Err(bad(
                        f,
                        "applies to series data (--data FILE.csv, .csv.gz, .parquet or a ragged .npz with `lengths`), not to windows".into(),
                    ));
                }
                None
            }
        };
        let is_series = series.is_some();
        let spec = TrainSpec {
            model: ModelConfig {
                input: self.features.unwrap_or(2),
                hidden: self
                    .hidden
                    .unwrap_or(if is_series { SERIES_HIDDEN } else { 8 }),
                layers: self.layers.unwrap_or(2),
                output: self.features.unwrap_or(2),
                head: self.head.unwrap_or(Head::Linear),
                dropout: self
                    .dropout
                    .unwrap_or(if is_series { SERIES_DROPOUT } else { 0.2 }),
                cond: None,
            },
            adam: AdamConfig {
                lr: self.lr.unwrap_or(if is_series { SERIES_LR } else { 1e-3 }),
                beta1: self.beta1.unwrap_or(0.9),
                beta2: self.beta2.unwrap_or(0.999),
                epsilon: self.epsilon.unwrap_or(1e-7),
            },
            batch_size: self
                .batch_size
                .unwrap_or(if is_series { SERIES_MAX_BATCH } else { 10 }),
            epochs: self
                .epochs
                .unwrap_or(if is_series { SERIES_EPOCHS.1 } else { 10 }),
            max_steps: self.steps,
            seed: self.seed.unwrap_or(42),
            reset: self.reset_states.unwrap_or(ResetPolicy::Epoch),
            val_state: self.val_state.unwrap_or(ValState::Carry),
            clip_norm: self.clip_norm,
            compat: self.compat.unwrap_or_default(),
            loss: self
                .loss
                .unwrap_or(if is_series && self.head != Some(Head::Softmax) {
                    model::config::LossKind::Huber
                } else {
                    model::config::LossKind::Mse
                }),
            huber_delta: self.huber_delta.unwrap_or(1.0),
            lr_schedule: self.lr_schedule.unwrap_or_default(),
            warmup_steps: self.warmup_steps.unwrap_or(0),
            lr_gamma: self.lr_gamma.unwrap_or(0.5),
            lr_step_epochs: self.lr_step_epochs.unwrap_or(1),
            series,
            quantiles: self.quantiles.clone().unwrap_or_default(),
        };
        if self.quantiles.is_some() && self.loss.is_some() {
            return Err(bad(
                "quantiles",
                "--quantiles trains with the pinball loss; --loss chooses the loss of point forecasts, so give one of them".into(),
            ));
        }
        let pair = proto::security::cert_and_key(self.tls_cert, self.tls_key)
            .map_err(|(field, msg)| bad(field, msg))?;
        let tls = match pair {
            Some((cert, key)) => Some(TlsFiles {
                cert,
                key,
                client_ca: self.tls_client_ca,
            }),
            None => {
                if self.tls_client_ca.is_some() {
                    return Err(bad(
                        "tls_client_ca",
                        "mutual TLS needs --tls-cert and --tls-key too".into(),
                    ));
                }
                None
            }
        };
        let token = proto::security::load_token(self.token.as_deref(), self.token_file.as_deref())
            .map_err(|msg| bad("token", msg))?;
        let spawn_workers = self.spawn_workers;
        let auto_resume = self.auto_resume.unwrap_or(false);
        let out = match self.out {
            Some(p) => OutDir::Given(p),
            None if auto_resume => {
                return Err(bad(
                    "auto_resume",
                    "--auto-resume resumes the run in --out, so --out DIR is expected too".into(),
                ));
            }
            None => OutDir::Fresh(fresh_run_dir()),
        };
        let deadline = match self.shard_deadline_ms {
            Some(ms) => DeadlinePolicy::Fixed(Duration::from_millis(ms)),
            None => DeadlinePolicy::Adaptive {
                floor: Duration::from_millis(self.deadline_floor_ms.unwrap_or(30_000)),
            },
        };
        let lease = Duration::from_millis(self.lease_ms.unwrap_or(3000));
        // synthetic validation runs in whole batches: the default holds at least one, and a
        // given count that holds none would fail every validation, so it is refused here
        let val_sequences = match self.val_sequences {
            None => DEFAULT_VAL_SEQUENCES.max(spec.batch_size),
            Some(n) if n > 0 && n < spec.batch_size && matches!(data, DataSource::Synthetic) => {
                return Err(bad(
                    "val_sequences",
                    format!(
                        "expected 0 (no validation) or at least one batch ({} sequences), got {n}",
                        spec.batch_size
                    ),
                ));
            }
            Some(n) => n,
        };
        let cfg = TrainConfig {
            data,
            sequences: self.sequences.unwrap_or(2000),
            val_sequences,
            timesteps: self.timesteps.unwrap_or(96),
            features: self.features.unwrap_or(2),
            max_data_bytes: self.max_data_mb.map(|mb| mb.saturating_mul(1 << 20)),
            spec,
            series_defaults: if is_series {
                SeriesDefaults {
                    batch_size: self.batch_size.is_none(),
                    epochs: self.epochs.is_none(),
                    dropout: self.dropout.is_none(),
                    hidden: self.hidden.is_none(),
                    lr: self.lr.is_none(),
                    loss: self.loss.is_none()
                        && self.head != Some(Head::Softmax)
                        && self.quantiles.is_none(),
                }
            } else {
                SeriesDefaults::default()
            },
            init_from_cond: self.init_from_cond.unwrap_or(false),
            patience: self.patience,
            initial_state: self.initial_state,
            init_from: self.init_from,
            given: GivenShape {
                hidden: self.hidden,
                layers: self.layers,
                head: self.head,
            },
            listen: self
                .listen
                .unwrap_or_else(|| "127.0.0.1:50051".parse().expect("valid address")),
            health_listen: self.health_listen,
            metrics_listen: self.metrics_listen,
            ui_listen: self.ui_listen,
            job: JobConfig {
                lease,
                min_workers: self
                    .workers
                    .unwrap_or(spawn_workers.filter(|&k| k > 0).unwrap_or(1)),
                max_workers: self.max_workers.unwrap_or(256),
                max_refusals: self.max_refusals.unwrap_or(3),
                max_deadline_misses: self.max_deadline_misses.unwrap_or(3),
                evict_backoff: Duration::from_millis(self.evict_backoff_ms.unwrap_or(5000)),
                deadline,
                verify_fraction: self.verify_fraction.unwrap_or(0.0),
                depth: self.pipeline_depth.unwrap_or(16),
                max_message_bytes: self.max_message_mb.unwrap_or(64).saturating_mul(1 << 20),
                simulate_ms_per_slot: self.simulate_ms_per_slot.unwrap_or(0.0),
                checkpoint_every: self.checkpoint_every.unwrap_or(50),
                ..JobConfig::default()
            },
            spawn_workers,
            worker_args: self
                .worker_args
                .map(|s| s.split_whitespace().map(String::from).collect())
                .unwrap_or_default(),
            out,
            resume: self.resume,
            auto_resume,
            overwrite: self.overwrite.unwrap_or(false),
            linger: self.linger.unwrap_or(false),
            checkpoint_every: self.checkpoint_every.unwrap_or(50),
            device: self.device.unwrap_or_default(),
            engine: self.engine.unwrap_or_default(),
            threads: self.threads.unwrap_or(0),
            token,
            tls,
            insecure: self.insecure.unwrap_or(false),
            max_message_bytes: self.max_message_mb.unwrap_or(64).saturating_mul(1 << 20),
            progress: self.progress.unwrap_or(Progress::Auto),
            link_delay: runtime::net::LinkDelay(Duration::from_micros(
                self.link_delay_us.unwrap_or(0),
            )),
            progress_every: match self.progress_every {
                Some(s) if !(s.is_finite() && s > 0.0) => {
                    return Err(bad(
                        "progress_every",
                        format!("expected seconds > 0, got {s}"),
                    ));
                }
                Some(s) => Duration::from_secs_f64(s),
                None => Duration::from_secs(5),
            },
        };
        cfg.validate()?;
        Ok(cfg)
    }
}

impl TrainConfig {
    /// Applies the defaults of series data that depend on the table, `series` series whose
    /// training parts have `chunks` chunks each: the batch covers every series, up to
    /// [`SERIES_MAX_BATCH`]; the epochs make about [`SERIES_STEP_BUDGET`] steps. Logs every
    /// series default the run takes, so that a user sees how they differ from the windows
    /// defaults.
    pub(crate) fn fit_series_defaults(&mut self, series: usize, chunks: &[u64]) {
        let d = self.series_defaults;
        if d.batch_size {
            self.spec.batch_size = series.clamp(1, SERIES_MAX_BATCH);
        }
        if d.epochs {
            // an epoch runs each series' chunks on one slot: at least the longest series' count,
            // and at least the chunks spread evenly over the slots
            let b = self.spec.batch_size as u64;
            let steps = chunks
                .iter()
                .copied()
                .max()
                .unwrap_or(1)
                .max(chunks.iter().sum::<u64>().div_ceil(b))
                .max(1);
            self.spec.epochs = SERIES_STEP_BUDGET
                .div_ceil(steps)
                .clamp(SERIES_EPOCHS.0, SERIES_EPOCHS.1);
        }
        self.series_defaults = SeriesDefaults::default();
        let mut chosen = Vec::new();
        if d.batch_size {
            chosen.push(format!(
                "--batch-size {} (the {series} series, at most {SERIES_MAX_BATCH})",
                self.spec.batch_size
            ));
        }
        if d.epochs {
            chosen.push(format!(
                "--epochs {} (about {SERIES_STEP_BUDGET} steps)",
                self.spec.epochs
            ));
        }
        if d.hidden {
            chosen.push(format!("--hidden {}", self.spec.model.hidden));
        }
        if d.lr {
            chosen.push(format!("--lr {}", self.spec.adam.lr));
        }
        if d.loss {
            chosen.push(format!("--loss {}", self.spec.loss));
        }
        if d.dropout {
            chosen.push(format!("--dropout {}", self.spec.model.dropout));
        }
        if !chosen.is_empty() {
            tracing::info!(
                "series data: defaults for forecasting, unlike the windows defaults (give a flag to set one): {}",
                chosen.join(", ")
            );
        }
    }

    /// Checks ranges and combinations; errors name the field.
    pub(crate) fn validate(&self) -> Result<(), CoordError> {
        let bad = |field: &str, msg: String| {
            Err(CoordError::Config {
                field: field.into(),
                msg,
            })
        };
        self.spec.validate().map_err(|e| match e {
            model::ModelError::Config { field, msg } => CoordError::Config { field, msg },
            other => CoordError::Config {
                field: "spec".into(),
                msg: other.to_string(),
            },
        })?;
        if self.timesteps == 0 {
            return bad("timesteps", "expected at least 1 time step, got 0".into());
        }
        if let Some(s) = &self.spec.series {
            if let Err((field, msg)) = s.check_roles() {
                return bad(field, msg);
            }
            if !s.calendar.is_empty() && s.time_column.is_none() {
                return bad(
                    "calendar",
                    "calendar features come from the time column, so --time-column is expected too (a column of dates or date-times)".into(),
                );
            }
        }
        if self.features == 0 {
            return bad("features", "expected at least 1 feature, got 0".into());
        }
        if self.data == DataSource::Synthetic && self.sequences < self.spec.batch_size {
            return bad(
                "sequences",
                format!(
                    "expected at least batch_size = {} synthetic sequences, got {}",
                    self.spec.batch_size, self.sequences
                ),
            );
        }
        let j = &self.job;
        if j.min_workers == 0 {
            return bad(
                "workers",
                "expected at least 1 worker to wait for, got 0".into(),
            );
        }
        if j.max_workers < j.min_workers {
            return bad(
                "max_workers",
                format!(
                    "expected at least --workers = {}, got {}",
                    j.min_workers, j.max_workers
                ),
            );
        }
        if self.checkpoint_every == 0 {
            return bad(
                "checkpoint_every",
                "expected at least 1 step between checkpoints, got 0".into(),
            );
        }
        if j.lease < Duration::from_millis(100) || j.lease > Duration::from_secs(3600) {
            return bad(
                "lease_ms",
                format!("expected 100..=3600000 ms, got {}", j.lease.as_millis()),
            );
        }
        let deadline = match j.deadline {
            DeadlinePolicy::Fixed(d) => ("shard_deadline_ms", d),
            DeadlinePolicy::Adaptive { floor } => ("deadline_floor_ms", floor),
        };
        if deadline.1 < Duration::from_millis(10) {
            return bad(
                deadline.0,
                format!("expected at least 10 ms, got {}", deadline.1.as_millis()),
            );
        }
        if j.max_refusals == 0 {
            return bad("max_refusals", "expected at least 1, got 0".into());
        }
        if j.max_deadline_misses == 0 {
            return bad("max_deadline_misses", "expected at least 1, got 0".into());
        }
        if j.depth == 0 || j.depth > 1024 {
            return bad(
                "pipeline_depth",
                format!("expected 1 to 1024 steps, got {}", j.depth),
            );
        }
        if !(j.simulate_ms_per_slot.is_finite() && j.simulate_ms_per_slot >= 0.0) {
            return bad(
                "simulate_ms_per_slot",
                format!("expected milliseconds >= 0, got {}", j.simulate_ms_per_slot),
            );
        }
        if !(0.0..=1.0).contains(&j.verify_fraction) {
            return bad(
                "verify_fraction",
                format!("expected a fraction in [0, 1], got {}", j.verify_fraction),
            );
        }
        if self.max_message_bytes < 1 << 20 {
            return bad("max_message_mb", "expected at least 1 MiB".into());
        }
        if self.max_data_bytes == Some(0) {
            return bad("max_data_mb", "expected at least 1 MiB".into());
        }
        if self.init_from.is_some() && (self.resume.is_some() || self.auto_resume) {
            return bad(
                "init_from",
                "--init-from and --resume both given: a resumed run continues from its checkpoint's weights and optimizer; give --init-from to a new run only".into(),
            );
        }
        if self.resume.is_some() && self.auto_resume {
            return bad(
                "auto_resume",
                "give either --resume DIR or --auto-resume, not both".into(),
            );
        }
        if let Some(t) = &self.token {
            t.check_strength().map_err(|msg| CoordError::Config {
                field: "token".into(),
                msg,
            })?;
        }
        if let Some(ui) = self.ui_listen
            && !ui.ip().is_loopback()
            && self.token.is_none()
        {
            if self.insecure {
                tracing::warn!(%ui, "--insecure: the status page is served off loopback without a token");
            } else {
                return bad(
                    "ui_listen",
                    format!(
                        "refusing to serve the status page on non-loopback address {ui} without a token (--token); pass --insecure to allow it"
                    ),
                );
            }
        }
        let local = self.spawn_workers == Some(0);
        let mutual_tls = self.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        if !local && !self.listen.ip().is_loopback() && self.token.is_none() && !mutual_tls {
            if self.insecure {
                tracing::warn!(
                    listen = %self.listen,
                    "--insecure: serving on a non-loopback address without a token or mutual TLS; anyone who can reach it can join, submit results or read the job's data"
                );
            } else {
                let tls_note = if self.tls.is_some() {
                    " (TLS without client certificates encrypts the connection but authenticates no worker)"
                } else {
                    ""
                };
                return bad(
                    "listen",
                    format!(
                        "refusing to serve on non-loopback address {} without a token (--token) or mutual TLS (--tls-client-ca){tls_note}; pass --insecure to allow it",
                        self.listen
                    ),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Wrap {
        #[command(flatten)]
        args: TrainArgs,
    }

    fn args(list: &[&str]) -> TrainArgs {
        Wrap::try_parse_from(std::iter::once("train").chain(list.iter().copied()))
            .unwrap()
            .args
    }

    /// The error of `list`, from the command line parser or from resolving it.
    fn error(list: &[&str]) -> String {
        match Wrap::try_parse_from(std::iter::once("train").chain(list.iter().copied())) {
            Err(e) => e.to_string(),
            Ok(w) => w.args.resolve().unwrap_err().to_string(),
        }
    }

    #[test]
    fn flags_beat_file_beat_defaults() {
        let mut a = args(&["--hidden", "16"]);
        let file: TrainArgs =
            toml::from_str("hidden = 32\nlayers = 3\nhead = \"softmax\"\n").unwrap();
        a.fill_from(file);
        let c = a.resolve().unwrap();
        assert_eq!(c.spec.model.hidden, 16, "flag wins over file");
        assert_eq!(c.spec.model.layers, 3, "file wins over default");
        assert_eq!(c.spec.model.head, Head::Softmax);
        assert_eq!(c.spec.batch_size, 10, "default");
    }

    #[test]
    fn unknown_toml_keys_and_bad_values_name_the_field() {
        let e = toml::from_str::<TrainArgs>("hiden = 3")
            .unwrap_err()
            .to_string();
        assert!(e.contains("hiden"), "{e}");
        let e = error(&["--head", "relu"]);
        assert!(e.contains("head") && e.contains("relu"), "{e}");
        let e = toml::from_str::<TrainArgs>("head = \"relu\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("relu") && e.contains("linear"), "{e}");
        let e = args(&["--batch-size", "0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("batch_size"), "{e}");
        let e = error(&["--reset-states", "every:x"]);
        assert!(e.contains("reset_states") && e.contains("every:K"), "{e}");
        let e = error(&["--device", "tpu"]);
        assert!(e.contains("device") && e.contains("tpu"), "{e}");
        let e = error(&["--verify-fraction", "2"]);
        assert!(e.contains("verify_fraction") && e.contains("[0, 1]"), "{e}");
        let e = error(&["--auto-resume"]);
        assert!(e.contains("auto_resume") && e.contains("--out"), "{e}");
        let e = args(&["--tls-cert", "a.pem"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("tls_key"), "{e}");
    }

    #[test]
    fn synthetic_validation_holds_at_least_one_batch() {
        assert_eq!(args(&[]).resolve().unwrap().val_sequences, 400);
        let c = args(&["--batch-size", "1024"]).resolve().unwrap();
        assert_eq!(c.val_sequences, 1024, "the default grows to one batch");
        let c = args(&["--batch-size", "1024", "--val-sequences", "0"])
            .resolve()
            .unwrap();
        assert_eq!(c.val_sequences, 0, "0 turns validation off");
        let e = error(&["--batch-size", "64", "--val-sequences", "10"]);
        assert!(
            e.contains("val_sequences") && e.contains("64") && e.contains("got 10"),
            "{e}"
        );
    }

    #[test]
    fn series_data_gets_its_own_defaults_unless_the_flags_are_set() {
        let c = args(&["--data", "t.csv"]).resolve().unwrap();
        assert_eq!(c.spec.model.dropout, SERIES_DROPOUT);
        assert_eq!(c.spec.model.hidden, SERIES_HIDDEN);
        assert_eq!(c.spec.adam.lr, SERIES_LR);
        assert_eq!(c.spec.loss, model::config::LossKind::Huber);
        let all = SeriesDefaults {
            batch_size: true,
            epochs: true,
            dropout: true,
            hidden: true,
            lr: true,
            loss: true,
        };
        assert_eq!(c.series_defaults, all);
        let mut c2 = c.clone();
        c2.fit_series_defaults(23, &[4, 3, 1]);
        assert_eq!(c2.spec.batch_size, 23, "every series in one batch");
        assert_eq!(c2.spec.epochs, 300, "1200 steps of 4 each");
        assert_eq!(c2.series_defaults, SeriesDefaults::default());
        let mut c3 = c.clone();
        // 500 series of 8 chunks over 64 slots: 63 steps an epoch
        c3.fit_series_defaults(500, &[8; 500]);
        assert_eq!(c3.spec.batch_size, SERIES_MAX_BATCH, "at most the limit");
        assert_eq!(c3.spec.epochs, 20, "about 1200 steps");
        let mut c4 = c.clone();
        c4.fit_series_defaults(5000, &[40; 5000]);
        assert_eq!(c4.spec.epochs, SERIES_EPOCHS.0, "at least");
        // given by a flag, the environment or the file: kept
        let c = args(&[
            "--data",
            "t.csv",
            "--batch-size",
            "4",
            "--dropout",
            "0.3",
            "--epochs",
            "7",
            "--hidden",
            "5",
            "--lr",
            "0.01",
            "--loss",
            "mse",
        ])
        .resolve()
        .unwrap();
        assert_eq!(c.series_defaults, SeriesDefaults::default());
        let mut c5 = c.clone();
        c5.fit_series_defaults(23, &[4]);
        assert_eq!(
            (
                c5.spec.batch_size,
                c5.spec.model.dropout,
                c5.spec.epochs,
                c5.spec.model.hidden
            ),
            (4, 0.3, 7, 5)
        );
        let mut a = args(&["--data", "t.csv"]);
        a.fill_from(toml::from_str("batch_size = 5\ndropout = 0.1\nepochs = 3\n").unwrap());
        let c = a.resolve().unwrap();
        assert_eq!(
            (c.spec.batch_size, c.spec.model.dropout, c.spec.epochs),
            (5, 0.1, 3)
        );
        assert!(!c.series_defaults.batch_size && !c.series_defaults.epochs && c.series_defaults.lr);
        // windows keep the seed model's defaults
        let c = args(&[]).resolve().unwrap();
        assert_eq!(
            (c.spec.batch_size, c.spec.model.dropout, c.spec.model.hidden),
            (10, 0.2, 8)
        );
        assert_eq!((c.spec.epochs, c.spec.adam.lr), (10, 1e-3));
        assert_eq!(c.series_defaults, SeriesDefaults::default());
    }

    #[test]
    fn covariates_and_calendar_are_checked_with_the_flag_named() {
        let c = args(&[
            "--data",
            "t.csv",
            "--time-column",
            "day",
            "--past-covariates",
            "visits,temp",
            "--future-covariates",
            "price",
            "--calendar",
            "dow,month",
            "--missing",
            "error",
        ])
        .resolve()
        .unwrap();
        let s = c.spec.series.unwrap();
        assert_eq!(s.past_covariates, ["visits", "temp"]);
        assert_eq!(s.future_covariates, ["price"]);
        use data::series::{Calendar, MissingPolicy};
        assert_eq!(s.calendar, [Calendar::Dow, Calendar::Month]);
        assert_eq!(s.missing, MissingPolicy::Error);
        let file: TrainArgs = toml::from_str(
            "future_covariates = [\"price\"]\ncalendar = [\"hour\"]\nmissing = \"mask\"\n",
        )
        .unwrap();
        assert_eq!(file.calendar, Some(vec![Calendar::Hour]));
        let e = error(&[
            "--data",
            "t.csv",
            "--past-covariates",
            "a",
            "--future-covariates",
            "a",
        ]);
        assert!(
            e.contains("future_covariates") && e.contains("\"a\"") && e.contains("one role"),
            "{e}"
        );
        let e = error(&[
            "--data",
            "t.csv",
            "--input-columns",
            "a,b",
            "--past-covariates",
            "b",
        ]);
        assert!(
            e.contains("past_covariates") && e.contains("--input-columns"),
            "{e}"
        );
        let e = error(&["--data", "t.csv", "--calendar", "dow"]);
        assert!(e.contains("calendar") && e.contains("--time-column"), "{e}");
        let e = error(&["--data", "t.csv", "--calendar", "week"]);
        assert!(e.contains("week") && e.contains("dow"), "{e}");
        let e = error(&["--data", "t.csv", "--missing", "drop"]);
        assert!(e.contains("drop") && e.contains("mask"), "{e}");
        let e = error(&["--past-covariates", "a"]);
        assert!(
            e.contains("past_covariates") && e.contains("series data"),
            "{e}"
        );
    }

    #[test]
    fn quantiles_are_levels_of_a_series_model_trained_without_another_loss() {
        let c = args(&["--data", "t.csv", "--quantiles", "0.1,0.5,0.9"])
            .resolve()
            .unwrap();
        assert_eq!(c.spec.quantiles, [0.1, 0.5, 0.9]);
        assert!(
            !c.series_defaults.loss,
            "the pinball loss, not the default one"
        );
        let file: TrainArgs = toml::from_str("quantiles = [0.05, 0.95]\n").unwrap();
        assert_eq!(file.quantiles, Some(vec![0.05, 0.95]));
        for (list, want) in [
            ("0.9,0.1", "ascending"),
            ("0.5,1", "strictly between 0 and 1"),
            ("0,0.5", "strictly between 0 and 1"),
        ] {
            let e = error(&["--data", "t.csv", "--quantiles", list]);
            assert!(e.contains("quantiles") && e.contains(want), "{list}: {e}");
        }
        let e = error(&["--data", "t.csv", "--quantiles", "0.5", "--loss", "mae"]);
        assert!(e.contains("quantiles") && e.contains("--loss"), "{e}");
        let e = error(&["--quantiles", "0.5"]);
        assert!(e.contains("quantiles") && e.contains("series data"), "{e}");
        let e = error(&["--data", "t.csv", "--quantiles", "a"]);
        assert!(e.contains("quantiles") && e.contains("'a'"), "{e}");
    }

    #[test]
    fn non_loopback_needs_protection() {
        let e = args(&["--listen", "0.0.0.0:0"])
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(e.contains("refusing") && e.contains("--insecure"), "{e}");
        assert!(
            args(&["--listen", "0.0.0.0:0", "--insecure"])
                .resolve()
                .is_ok()
        );
        let strong = "0123456789abcdef0123";
        assert!(
            args(&["--listen", "0.0.0.0:0", "--token", strong])
                .resolve()
                .is_ok()
        );
        // a weak token is refused wherever it is used, with advice
        let e = error(&["--token", "s3cret"]);
        assert!(e.contains("token") && e.contains("openssl rand"), "{e}");
        let e = error(&["--listen", "0.0.0.0:0", "--token", "change-me"]);
        assert!(e.contains("placeholder"), "{e}");
        // server-only TLS authenticates nobody
        let e = error(&[
            "--listen",
            "0.0.0.0:0",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]);
        assert!(
            e.contains("refusing") && e.contains("authenticates no worker"),
            "{e}"
        );
        assert!(
            args(&[
                "--listen",
                "0.0.0.0:0",
                "--tls-cert",
                "c.pem",
                "--tls-key",
                "k.pem",
                "--tls-client-ca",
                "ca.pem"
            ])
            .resolve()
            .is_ok(),
            "mutual TLS authenticates the workers"
        );
        assert!(
            args(&["--listen", "0.0.0.0:0", "--spawn-workers", "0"])
                .resolve()
                .is_ok()
        );
    }
}
