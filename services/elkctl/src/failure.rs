//! How elkctl reports a failed command: one `error:` line (the message with its causes and a
//! machine-readable code), a `hint:` line where there is something to do, and an exit status
//! per kind of failure, so scripts can tell "not found" from "conflict" from "try again".
//! With `--json` the failure is printed on stdout as `{"error": {"code": ..., "message": ...}}`.
//!
//! | exit | failure | codes |
//! |---|---|---|
//! | 2 | invalid arguments (refused before any network call), or another local error | `invalid_argument` |
//! | 3 | the assigner refused: no such job or partition | `unknown_job`, `unknown_partition` |
//! | 4 | the assigner refused: conflicts with the current state | `already_exists`, `invalid_state` |
//! | 5 | the assigner refused: anything else | `invalid_spec`, `bad_request`, `limit_exceeded`, `forbidden`, `internal` |
//! | 6 | try again later: no assigner leads, the leader did not answer, or it is unavailable | `no_leader`, `timed_out`, `unavailable` |
//! | 7 | NATS: cannot connect, or the request failed on the way | `nats`, `transport` |
//!
//! (0 is success; 1 is a command's own negative outcome, e.g. `watch` saw a job cancelled;
//! 130 is Ctrl-C.)

use elk_nats::{AdminClientError, NatsError};
use elk_protocol::admin::AdminErrorCode;
use std::process::ExitCode;

pub const EXIT_INVALID_ARGUMENT: u8 = 2;
pub const EXIT_NOT_FOUND: u8 = 3;
pub const EXIT_CONFLICT: u8 = 4;
pub const EXIT_REFUSED: u8 = 5;
pub const EXIT_TRY_AGAIN: u8 = 6;
pub const EXIT_NATS: u8 = 7;

/// A failed command, ready to print.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: u8,
    pub code: &'static str,
    pub message: String,
    pub hint: Option<&'static str>,
}

impl Failure {
    /// Classifies `error` by the first ELK error in its chain.
    pub fn of(error: &anyhow::Error) -> Self {
        let message = chain(error);
        for cause in error.chain() {
            if let Some(admin) = cause.downcast_ref::<AdminClientError>() {
                return Self::admin(admin, message);
            }
            if cause.is::<NatsError>() {
                return Failure {
                    exit: EXIT_NATS,
                    code: "nats",
                    message,
                    hint: Some(
                        "is nats-server running there? --nats-url (ELK_NATS_URL) says where",
                    ),
                };
            }
        }
        Failure {
            exit: EXIT_INVALID_ARGUMENT,
            code: "invalid_argument",
            message,
            hint: None,
        }
    }

    fn admin(error: &AdminClientError, message: String) -> Self {
        let (exit, hint) = match error {
            AdminClientError::Refused { error, .. } => refusal(error.code),
            AdminClientError::NoLeader { .. } => (
                EXIT_TRY_AGAIN,
                Some("`elkctl status` shows the leaders; --wait SECS waits longer"),
            ),
            AdminClientError::TimedOut { .. } => (
                EXIT_TRY_AGAIN,
                Some(
                    "the command may have been applied: look (e.g. `elkctl job get`) before \
                     repeating it; with credentials, check that they may send this command (an \
                     observer may only read: docs/security.md)",
                ),
            ),
            AdminClientError::Transport { .. } | AdminClientError::UnexpectedResult { .. } => {
                (EXIT_NATS, None)
            }
        };
        // A refusal is the operator's sentence as the assigner wrote it.
        let message = match error.refusal() {
            Some(refusal) => refusal.message.clone(),
            None => message,
        };
        Failure {
            exit,
            code: error.code(),
            message,
            hint,
        }
    }

    /// Prints the failure (stderr, or stdout as JSON) and returns the exit status.
    pub fn report(&self, json: bool) -> ExitCode {
        if json {
            let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
            println!("{body}");
        } else {
            eprintln!("error: {} [{}]", self.message, self.code);
            if let Some(hint) = self.hint {
                eprintln!("hint: {hint}");
            }
        }
        ExitCode::from(self.exit)
    }
}

fn refusal(code: AdminErrorCode) -> (u8, Option<&'static str>) {
    match code {
        AdminErrorCode::UnknownJob => (EXIT_NOT_FOUND, Some("`elkctl job list` shows the jobs")),
        AdminErrorCode::UnknownPartition => (
            EXIT_NOT_FOUND,
            Some("`elkctl partitions --job JOB` shows the live partitions"),
        ),
        AdminErrorCode::UnknownMember => (
            EXIT_NOT_FOUND,
            Some("`elkctl members` shows the live members"),
        ),
        AdminErrorCode::AlreadyExists => (
            EXIT_CONFLICT,
            Some("pick another name; `elkctl job get NAME` shows the existing job"),
        ),
        AdminErrorCode::InvalidState => (
            EXIT_CONFLICT,
            Some("`elkctl job get NAME` shows the job's state"),
        ),
        AdminErrorCode::InvalidSpec => (
            EXIT_REFUSED,
            Some("`elkctl job create --help` lists the limits"),
        ),
        AdminErrorCode::Unavailable => (EXIT_TRY_AGAIN, Some("try again in a moment")),
        AdminErrorCode::BadRequest
        | AdminErrorCode::LimitExceeded
        | AdminErrorCode::Forbidden
        | AdminErrorCode::Internal => (EXIT_REFUSED, None),
    }
}

/// The error and its causes on one line, each said once.
fn chain(error: &anyhow::Error) -> String {
    let root: &(dyn std::error::Error + 'static) = error.as_ref();
    elk_nats::report(root)
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_protocol::admin::AdminError;
    use std::time::Duration;

    fn refused(code: AdminErrorCode, message: &str) -> anyhow::Error {
        AdminClientError::Refused {
            service: "assigner",
            verb: "get_job",
            error: AdminError::new(code, message),
        }
        .into()
    }

    #[test]
    fn refusals_keep_their_message_and_map_codes_to_exit_statuses() {
        let failure = Failure::of(&refused(AdminErrorCode::UnknownJob, "unknown job 'x'"));
        assert_eq!(
            (failure.exit, failure.code, failure.message.as_str()),
            (EXIT_NOT_FOUND, "unknown_job", "unknown job 'x'")
        );
        assert!(failure.hint.unwrap().contains("job list"));
        let conflict = Failure::of(&refused(AdminErrorCode::AlreadyExists, "exists"));
        assert_eq!(conflict.exit, EXIT_CONFLICT);
        let invalid = Failure::of(&refused(AdminErrorCode::InvalidSpec, "bad"));
        assert_eq!(invalid.exit, EXIT_REFUSED);
        let context = refused(AdminErrorCode::InvalidState, "paused").context("pausing");
        assert_eq!(
            Failure::of(&context).exit,
            EXIT_CONFLICT,
            "found under context"
        );
    }

    #[test]
    fn client_failures_say_to_try_again_and_local_ones_are_argument_errors() {
        let no_leader: anyhow::Error = AdminClientError::NoLeader {
            service: "assigner",
            verb: "stats",
            namespace: elk_types::Namespace::new("prod").unwrap(),
            patience: Duration::from_secs(5),
        }
        .into();
        let failure = Failure::of(&no_leader);
        assert_eq!((failure.exit, failure.code), (EXIT_TRY_AGAIN, "no_leader"));
        assert!(failure.message.contains("namespace 'prod'"), "{failure:?}");
        let nats: anyhow::Error = NatsError::connect("nats://x:1", "refused").into();
        assert_eq!(Failure::of(&nats).exit, EXIT_NATS);
        let local = Failure::of(&anyhow::anyhow!("--end 5 is below --start 10"));
        assert_eq!(
            (local.exit, local.code),
            (EXIT_INVALID_ARGUMENT, "invalid_argument")
        );
    }
}
