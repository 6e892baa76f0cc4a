//! Progress of a bulk run on stderr: an indicatif bar on a terminal, or (when stderr is a pipe
//! or a log file, where a bar would be noise) a plain line every few seconds and at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ProgressMode {
    /// A bar when stderr is a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Always the bar, even when stderr is not a terminal (e.g. under `script` or in a CI log
    /// that renders escape codes).
    Bar,
    /// Always log lines.
    Log,
    /// Nothing but the final summary.
    Off,
}

/// How often log lines are written.
const LOG_EVERY: Duration = Duration::from_secs(2);

/// The progress display of one run.
pub struct Progress {
    bar: Option<ProgressBar>,
    log: bool,
    noun: &'static str,
    total: u64,
    done: u64,
    skipped: u64,
    started: Instant,
    last_log: Instant,
}

impl Progress {
    /// A display for `total` items, called `noun` in messages.
    pub fn new(mode: ProgressMode, total: u64, noun: &'static str) -> Progress {
        let terminal = std::io::stderr().is_terminal();
        let target = match mode {
            ProgressMode::Auto if terminal => Some(ProgressDrawTarget::stderr()),
            // A TermLike target is never hidden, unlike `stderr()` off a terminal.
            ProgressMode::Bar => Some(ProgressDrawTarget::term_like(Box::new(
                console::Term::stderr(),
            ))),
            _ => None,
        };
        let bar = target.map(|target| {
            let bar = ProgressBar::with_draw_target(Some(total), target);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} {msg} {per_sec:1} eta {eta}",
                )
                .expect("the template is valid")
                .progress_chars("█▉▊▋▌▍▎▏ "),
            );
            bar.set_message(noun);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        let now = Instant::now();
        Progress {
            log: bar.is_none() && matches!(mode, ProgressMode::Auto | ProgressMode::Log),
            bar,
            noun,
            total,
            done: 0,
            skipped: 0,
            started: now,
            last_log: now,
        }
    }

    /// Prints a line on stderr without breaking the bar.
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// Counts a finished batch.
    pub fn advance(&mut self, embedded: u64, skipped: u64) {
        self.done += embedded + skipped;
        self.skipped += skipped;
        if let Some(bar) = &self.bar {
            bar.set_position(self.done);
            if self.skipped > 0 {
                bar.set_message(format!("{} ({} skipped)", self.noun, self.skipped));
            }
        } else if self.log && self.last_log.elapsed() >= LOG_EVERY && self.done < self.total {
            self.last_log = Instant::now();
            eprintln!("{}", self.line());
        }
    }

    fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let percent = if self.total > 0 {
            100.0 * self.done as f64 / self.total as f64
        } else {
            100.0
        };
        let eta = if rate > 0.0 && self.done < self.total {
            format!(
                ", eta {:.0}s",
                (self.total - self.done.min(self.total)) as f64 / rate
            )
        } else {
            String::new()
        };
        format!(
            "progress: {}/{} {} ({percent:.0}%), {} skipped, {rate:.1}/s{eta}",
            self.done, self.total, self.noun, self.skipped
        )
    }

    /// Ends the display: the bar stays drawn where the work stopped (indicatif's `finish` would
    /// move it to the end, so an interrupted run would look complete); a log line says where
    /// the run stopped.
    pub fn finish(&mut self) {
        if let Some(bar) = &self.bar {
            if self.done >= self.total {
                bar.finish();
            } else {
                bar.abandon();
            }
        } else if self.log {
            eprintln!("{}", self.line());
        }
    }
}
