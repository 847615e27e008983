//! The `sluice-cni` executable: CNI environment + stdin in, reply out.

use std::io::{Read, Write};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::process::ExitCode;

use sluice_cni::cmd::{MAX_STDIN, Outcome, dispatch};
use sluice_net::cni::error::{CniError, code};
use sluice_net::cni::version::CniVersion;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    // One byte over the limit is enough for dispatch to refuse it.
    let read = std::io::stdin()
        .take(MAX_STDIN as u64 + 1)
        .read_to_end(&mut stdin);
    let outcome = match read {
        Err(e) => Outcome::error(
            &CniError::new(code::IO, format!("cannot read stdin: {e}")),
            CniVersion::LATEST,
        ),
        // A panic is a bug, but the runtime still deserves an answer it can
        // parse rather than a bare exit status.
        Ok(_) => catch_unwind(AssertUnwindSafe(|| dispatch(std::env::vars_os(), &stdin)))
            .unwrap_or_else(|_| {
                Outcome::error(
                    &CniError::new(code::IO, "internal error (see stderr)"),
                    CniVersion::LATEST,
                )
            }),
    };
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(&outcome.stdout);
    let _ = out.flush();
    ExitCode::from(outcome.exit_code)
}
