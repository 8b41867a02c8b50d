//! Agent log lines on stderr, which is the serial console (`/dev/console`)
//! in init mode. Guest programs can trigger many log lines (bad frames,
//! failing execs), so output is limited to [`MAX_LINES_PER_SECOND`]; lines
//! over the limit are counted and reported once the next second starts.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

/// Maximum log lines written per second.
const MAX_LINES_PER_SECOND: u32 = 20;

struct Limiter {
    second_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

static LIMITER: Mutex<Limiter> = Mutex::new(Limiter {
    second_start: None,
    written: 0,
    suppressed: 0,
});

/// Writes one log line unless this second's quota is spent.
pub(crate) fn write(args: std::fmt::Arguments<'_>) {
    let mut limiter = LIMITER
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let now = Instant::now();
    let mut stderr = std::io::stderr().lock();

    let new_second = limiter
        .second_start
        .is_none_or(|start| now.duration_since(start).as_secs() >= 1);
    if new_second {
        if limiter.suppressed > 0 {
            let _ = writeln!(
                stderr,
                "smolvm-agent: {} log lines suppressed by the rate limit",
                limiter.suppressed
            );
        }
        *limiter = Limiter {
            second_start: Some(now),
            written: 0,
            suppressed: 0,
        };
    }

    if limiter.written >= MAX_LINES_PER_SECOND {
        limiter.suppressed += 1;
        return;
    }
    limiter.written += 1;
    let _ = writeln!(stderr, "smolvm-agent: {args}");
}

/// Logs a formatted line through the rate limiter.
macro_rules! log {
    ($($arg:tt)*) => {
        $crate::log::write(format_args!($($arg)*))
    };
}

pub(crate) use log;
