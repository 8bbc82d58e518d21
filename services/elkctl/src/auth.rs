//! `elkctl auth` — set up NATS authorization for a deployment (decentralized JWTs, see
//! `docs/security.md`) — and `elkctl provision` (create or update every resource of a namespace,
//! with an admin identity).
//!
//! ```text
//! elkctl auth init --namespace prod              # operator, system account, prod's account + role keys
//! elkctl auth server-config > auth.conf          # include it in nats-server.conf
//! elkctl auth creds --namespace prod --role admin --name ops --out admin.creds
//! elkctl provision --namespace prod --nats-credentials-file admin.creds ...
//! elkctl auth creds --namespace prod --role worker --name worker-7 --out worker-7.creds
//! elkctl auth permissions --namespace prod --role worker   # what that role may do
//! ```
//!
//! The deployment directory (`--dir`, `ELK_AUTH_DIR`, default `./elk-auth`) holds the nkey seeds
//! of the operator, the accounts and every role's signing key: keep it secret (files are 0600).

use crate::connect::TargetArgs;
use anyhow::Context;
use elk_auth::{Deployment, Role};
use elk_protocol::names::Names;
use elk_types::Namespace;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum AuthCommand {
    /// Create the deployment's keys (operator, system account) if missing, and an account with a
    /// scoped signing key per role for the namespace.
    Init(InitArgs),
    /// Print the nats-server configuration of the deployment (operator, accounts, resolver).
    ServerConfig(DirArgs),
    /// Issue credentials (a `.creds` file) for one identity.
    Creds(CredsArgs),
    /// Print what a role may publish and subscribe (the server enforces exactly this).
    Permissions(PermissionsArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// Directory with the deployment's keys (secret).
    #[arg(long, env = "ELK_AUTH_DIR", default_value = "elk-auth")]
    pub dir: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Namespace to create an account for.
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, clap::Args)]
pub struct CredsArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// admin, election, assigner, scaler, worker, planner, operator or observer.
    #[arg(long)]
    pub role: String,
    /// The identity's name: the member id of an election, assigner, scaler or worker replica
    /// (it may write only that member key), the job of a planner, a label otherwise.
    #[arg(long)]
    pub name: String,
    /// Write the `.creds` file here (mode 0600) instead of printing it.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Days until the credentials expire (default: never; revoke by rotating the role's key).
    #[arg(long, value_name = "DAYS")]
    pub expires_in_days: Option<u64>,
}

#[derive(Debug, clap::Args)]
pub struct PermissionsArgs {
    #[arg(long, env = "ELK_NAMESPACE", default_value = "default")]
    pub namespace: String,
    /// Only this role (default: every role).
    #[arg(long)]
    pub role: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    #[command(flatten)]
    pub target: TargetArgs,
    /// Copies of every bucket and of the progress stream (1 on a single server, 3 on a cluster
    /// of 3); existing resources are changed to it. Unset: existing ones keep theirs, new ones 1.
    #[arg(long, env = "ELK_REPLICAS", value_name = "N",
          value_parser = clap::value_parser!(u8).range(1..=elk_nats::MAX_REPLICAS as i64))]
    pub replicas: Option<u8>,
}

fn role(text: &str) -> anyhow::Result<Role> {
    Role::parse(text).with_context(|| {
        let roles: Vec<&str> = Role::ALL.iter().map(|role| role.as_str()).collect();
        format!("--role '{text}' is not one of {}", roles.join(", "))
    })
}

pub fn run(command: AuthCommand) -> anyhow::Result<ExitCode> {
    match command {
        AuthCommand::Init(args) => {
            let namespace = Namespace::new(&args.namespace).context("--namespace")?;
            let mut deployment = Deployment::open_or_create(&args.dir.dir)?;
            deployment.add_namespace(&namespace)?;
            eprintln!(
                "deployment in {} (keep it secret): operator {}, namespace {namespace} = account {}",
                args.dir.dir.display(),
                deployment.operator_public_key(),
                deployment.account_public_key(&namespace)?
            );
            eprintln!(
                "next: `elkctl auth server-config` into the server's configuration, then \
                 `elkctl auth creds --role admin ...` and `elkctl provision`"
            );
        }
        AuthCommand::ServerConfig(args) => {
            let deployment = Deployment::open(&args.dir)?;
            print!("{}", deployment.server_config()?);
        }
        AuthCommand::Creds(args) => {
            let namespace = Namespace::new(&args.namespace).context("--namespace")?;
            let role = role(&args.role)?;
            let deployment = Deployment::open(&args.dir.dir)?;
            let expires = args
                .expires_in_days
                .map(|days| elk_protocol::messages::unix_ms_now() / 1000 + days * 86_400);
            let credentials = deployment.issue(&namespace, role, &args.name, expires)?;
            match &args.out {
                Some(path) => {
                    credentials.write(path)?;
                    eprintln!(
                        "{role} '{}' of namespace {namespace}: {} (user {})",
                        args.name,
                        path.display(),
                        credentials.public_key
                    );
                }
                None => print!("{}", credentials.creds_file()),
            }
        }
        AuthCommand::Permissions(args) => {
            let namespace = Namespace::new(&args.namespace).context("--namespace")?;
            let names = Names::new(namespace);
            let roles = match &args.role {
                Some(text) => vec![role(text)?],
                None => Role::ALL.to_vec(),
            };
            for role in roles {
                print!("{}", render_permissions(role, &names));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn render_permissions(role: Role, names: &Names) -> String {
    let mut out = format!("{role} (name = {})\n", role.name_means());
    match role.permissions(names) {
        None => out.push_str("  unrestricted in the namespace's account\n"),
        Some(permissions) => {
            for subject in &permissions.publish {
                out.push_str(&format!("  publish   {subject}\n"));
            }
            for subject in &permissions.subscribe {
                out.push_str(&format!("  subscribe {subject}\n"));
            }
            if permissions.respond {
                out.push_str("  reply     to the requests it receives (one reply each)\n");
            }
        }
    }
    out
}

/// `elkctl provision`: creates or updates every bucket, the progress stream and its consumer.
pub async fn provision(args: ProvisionArgs) -> anyhow::Result<ExitCode> {
    let resources = args
        .target
        .provision(args.replicas.map(usize::from))
        .await?;
    let names = &resources.names;
    println!(
        "namespace {} provisioned: buckets {}, {}, {}, {}, {}, {}; stream {} with consumer {}",
        names.namespace(),
        names.members_bucket(),
        names.leases_bucket(),
        names.jobs_bucket(),
        names.partitions_bucket(),
        names.assignments_bucket(),
        names.fleet_bucket(),
        names.progress_stream(),
        elk_protocol::names::PROGRESS_CONSUMER
    );
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_named_and_unknown_ones_listed() {
        assert_eq!(role("worker").unwrap(), Role::Worker);
        let error = role("root").unwrap_err().to_string();
        assert!(error.contains("observer"), "{error}");
        let names = Names::new(Namespace::new("prod").unwrap());
        let text = render_permissions(Role::Worker, &names);
        assert!(
            text.contains("publish   elk.prod.progress.{{name()}}"),
            "{text}"
        );
        assert!(render_permissions(Role::Admin, &names).contains("unrestricted"));
    }
}
