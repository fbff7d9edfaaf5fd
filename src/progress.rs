//! Progress bars and spinners that log lines never tear.
//!
//! A log line written to stderr while a bar is drawn lands in the middle of the bar, and the
//! bar's next redraw overwrites half of the line. So every bar lumen draws joins one set (an
//! indicatif `MultiProgress`), and the log writer prints each line through [`suspend`]: the
//! bars are cleared, the line is written, the bars are drawn again below it.
//!
//! A leaf module: the downloader, the commands and the log writer all use it. Bars are only
//! drawn when the caller says they are visible (stderr is a terminal, no `--json`); invisible
//! ones stay out of the set, which would otherwise draw them.

use std::sync::LazyLock;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget};

static BARS: LazyLock<MultiProgress> = LazyLock::new(MultiProgress::new);

/// A bar of `len` steps, drawn on stderr when `visible` (style it with `set_style`).
pub fn bar(len: u64, visible: bool) -> ProgressBar {
    if visible {
        BARS.add(ProgressBar::new(len))
    } else {
        ProgressBar::hidden()
    }
}

/// A ticking spinner with `message`, drawn on stderr when `visible`.
pub fn spinner(message: String, visible: bool) -> ProgressBar {
    if !visible {
        return ProgressBar::hidden();
    }
    let spinner = BARS.add(ProgressBar::new_spinner().with_message(message));
    spinner.enable_steady_tick(Duration::from_millis(120));
    spinner
}

/// Runs `write` with every bar cleared from the terminal, then draws them again; the lock it
/// holds meanwhile also keeps two threads' lines whole. `write` must not log.
pub fn suspend<R>(write: impl FnOnce() -> R) -> R {
    BARS.suspend(write)
}

/// No bar is drawn from now on (`--quiet`).
pub fn hide_all() {
    BARS.set_draw_target(ProgressDrawTarget::hidden());
}
