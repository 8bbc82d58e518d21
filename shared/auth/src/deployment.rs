//! A deployment's NATS trust chain, kept as nkey seeds in one directory, and everything derived
//! from it: the server configuration (operator JWT, account JWTs preloaded in a memory resolver)
//! and user credentials per role and name.
//!
//! ```text
//! <dir>/operator.nk                 operator identity (signs account JWTs)
//! <dir>/system.nk                   the system account (server housekeeping; no ELK user)
//! <dir>/accounts/<ns>/account.nk    one account per namespace: namespaces are isolated
//! <dir>/accounts/<ns>/<role>.nk     one scoped signing key per role (not admin)
//! ```
//!
//! One account per namespace; in it, each role but admin has a **scoped signing key** whose
//! template carries the role's permissions ([`Role::permissions`]). A user JWT signed by that key
//! gets exactly those permissions, with `{{name()}}` filled in from the user's name: issuing
//! credentials for worker `w-7` is signing one small JWT, with no server change. Admin users are
//! signed by the account key itself and carry no restriction. The seeds are secrets: whoever
//! holds a role's key can issue identities of that role.

use crate::jwt;
use crate::roles::{Permissions, Role};
use crate::{AuthError, Credentials};
use elk_protocol::names::Names;
use elk_types::{MemberId, Namespace};
use nkeys::KeyPair;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// How long a reply permission of a responding role (assigner, planner) lasts, in nanoseconds.
const RESPONSE_TTL_NANOS: u64 = 60_000_000_000;

/// The trust chain of one deployment, loaded from (and saved to) its directory.
pub struct Deployment {
    dir: PathBuf,
    operator: KeyPair,
    system: KeyPair,
    accounts: BTreeMap<String, AccountKeys>,
}

impl std::fmt::Debug for Deployment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Deployment")
            .field("dir", &self.dir)
            .field("operator", &self.operator.public_key())
            .field("namespaces", &self.accounts.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// One namespace's account key and its roles' scoped signing keys.
struct AccountKeys {
    account: KeyPair,
    signing: BTreeMap<Role, KeyPair>,
}

impl Deployment {
    /// Loads the deployment in `dir`, creating the operator and system account if the directory
    /// has none yet.
    pub fn open_or_create(dir: &Path) -> Result<Deployment, AuthError> {
        std::fs::create_dir_all(dir).map_err(|e| AuthError::io(dir, e))?;
        let operator = load_or_create(&dir.join("operator.nk"), KeyPair::new_operator)?;
        let system = load_or_create(&dir.join("system.nk"), KeyPair::new_account)?;
        let mut deployment = Deployment {
            dir: dir.to_path_buf(),
            operator,
            system,
            accounts: BTreeMap::new(),
        };
        let accounts = dir.join("accounts");
        if accounts.is_dir() {
            let entries = std::fs::read_dir(&accounts).map_err(|e| AuthError::io(&accounts, e))?;
            for entry in entries {
                let entry = entry.map_err(|e| AuthError::io(&accounts, e))?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Ok(namespace) = Namespace::new(&name) {
                    deployment.load_account(&namespace, false)?;
                }
            }
        }
        Ok(deployment)
    }

    /// Loads an existing deployment; an error if `dir` holds none.
    pub fn open(dir: &Path) -> Result<Deployment, AuthError> {
        if !dir.join("operator.nk").is_file() {
            return Err(AuthError::NoDeployment {
                dir: dir.to_path_buf(),
            });
        }
        Self::open_or_create(dir)
    }

    /// Adds `namespace`'s account and signing keys (kept if they exist already).
    pub fn add_namespace(&mut self, namespace: &Namespace) -> Result<(), AuthError> {
        self.load_account(namespace, true)
    }

    fn load_account(&mut self, namespace: &Namespace, create: bool) -> Result<(), AuthError> {
        let dir = self.dir.join("accounts").join(namespace.as_str());
        if !create && !dir.join("account.nk").is_file() {
            return Ok(());
        }
        std::fs::create_dir_all(&dir).map_err(|e| AuthError::io(&dir, e))?;
        let account = load_or_create(&dir.join("account.nk"), KeyPair::new_account)?;
        let mut signing = BTreeMap::new();
        for role in Role::ALL.into_iter().filter(|role| *role != Role::Admin) {
            let path = dir.join(format!("{role}.nk"));
            signing.insert(role, load_or_create(&path, KeyPair::new_account)?);
        }
        self.accounts
            .insert(namespace.to_string(), AccountKeys { account, signing });
        Ok(())
    }

    /// The namespaces that have an account.
    pub fn namespaces(&self) -> Vec<String> {
        self.accounts.keys().cloned().collect()
    }

    pub fn operator_public_key(&self) -> String {
        self.operator.public_key()
    }

    /// The public key of `namespace`'s account.
    pub fn account_public_key(&self, namespace: &Namespace) -> Result<String, AuthError> {
        Ok(self.account(namespace)?.account.public_key())
    }

    fn account(&self, namespace: &Namespace) -> Result<&AccountKeys, AuthError> {
        self.accounts
            .get(namespace.as_str())
            .ok_or_else(|| AuthError::UnknownNamespace {
                namespace: namespace.to_string(),
                dir: self.dir.clone(),
            })
    }

    /// The operator JWT (self-signed), naming the system account.
    pub fn operator_jwt(&self) -> Result<String, AuthError> {
        let nats = json!({
            "system_account": self.system.public_key(),
            "type": "operator",
            "version": 2,
        });
        jwt::encode(
            &self.operator,
            &self.operator.public_key(),
            "elk",
            None,
            nats,
        )
    }

    /// The system account's JWT.
    pub fn system_account_jwt(&self) -> Result<String, AuthError> {
        let nats = json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1},
            "type": "account",
            "version": 2,
        });
        jwt::encode(&self.operator, &self.system.public_key(), "SYS", None, nats)
    }

    /// `namespace`'s account JWT: JetStream enabled, one scoped signing key per role whose
    /// template holds the role's permissions.
    pub fn account_jwt(&self, namespace: &Namespace) -> Result<String, AuthError> {
        let keys = self.account(namespace)?;
        let names = Names::new(namespace.clone());
        let signing_keys: Vec<Value> = keys
            .signing
            .iter()
            .map(|(role, key)| {
                let permissions = role.permissions(&names).unwrap_or_default();
                json!({
                    "kind": "user_scope",
                    "key": key.public_key(),
                    "role": role.as_str(),
                    "template": template(&permissions),
                    "description": format!("ELK {role} of namespace {namespace}"),
                })
            })
            .collect();
        let nats = json!({
            "limits": {"subs": -1, "data": -1, "payload": -1, "imports": -1, "exports": -1,
                       "wildcards": true, "conn": -1, "leaf": -1,
                       "mem_storage": -1, "disk_storage": -1, "streams": -1, "consumer": -1},
            "signing_keys": signing_keys,
            "default_permissions": {"pub": {}, "sub": {}},
            "type": "account",
            "version": 2,
        });
        let name = format!("elk-{namespace}");
        jwt::encode(
            &self.operator,
            &keys.account.public_key(),
            &name,
            None,
            nats,
        )
    }

    /// The authorization part of a nats-server configuration: the operator, the system account
    /// and every namespace's account preloaded in a memory resolver. Add `listen`, `jetstream`
    /// and `tls` blocks around it (`docs/security.md` has a complete example).
    pub fn server_config(&self) -> Result<String, AuthError> {
        let mut text = format!(
            "# ELK Coordinator decentralized auth, generated by `elkctl auth server-config`.\n\
             # Operator {}. Regenerate after adding a namespace.\n\
             operator: \"{}\"\n\
             system_account: {}\n\
             resolver: MEMORY\n\
             resolver_preload: {{\n  {}: \"{}\"\n",
            self.operator.public_key(),
            self.operator_jwt()?,
            self.system.public_key(),
            self.system.public_key(),
            self.system_account_jwt()?,
        );
        for namespace in self.accounts.keys() {
            let namespace = Namespace::new(namespace).map_err(|e| AuthError::Jwt(e.to_string()))?;
            text.push_str(&format!(
                "  # namespace {namespace}\n  {}: \"{}\"\n",
                self.account_public_key(&namespace)?,
                self.account_jwt(&namespace)?
            ));
        }
        text.push_str("}\n");
        Ok(text)
    }

    /// Credentials of a new user of `role` in `namespace`, named `name` (a member id for the
    /// election, assigner, scaler and worker roles, a job for a planner), valid until `expires`
    /// (Unix seconds) or for ever.
    pub fn issue(
        &self,
        namespace: &Namespace,
        role: Role,
        name: &str,
        expires: Option<u64>,
    ) -> Result<Credentials, AuthError> {
        validate_name(role, name)?;
        let keys = self.account(namespace)?;
        let user = KeyPair::new_user();
        let account = keys.account.public_key();
        let mut nats = json!({
            "tags": [format!("elk-role:{role}"), format!("elk-namespace:{}", namespace.as_str().to_ascii_lowercase())],
            "type": "user",
            "version": 2,
        });
        let signer = match keys.signing.get(&role) {
            Some(scoped) => {
                // A scoped user carries no permissions of its own: the key's template applies.
                nats["issuer_account"] = json!(account);
                scoped
            }
            None => {
                nats["pub"] = json!({});
                nats["sub"] = json!({});
                nats["subs"] = json!(-1);
                nats["data"] = json!(-1);
                nats["payload"] = json!(-1);
                &keys.account
            }
        };
        let jwt = jwt::encode(signer, &user.public_key(), name, expires, nats)?;
        let seed = user
            .seed()
            .map_err(|e| AuthError::Key(format!("cannot export a user seed: {e}")))?;
        Ok(Credentials {
            jwt,
            seed,
            public_key: user.public_key(),
        })
    }
}

/// A role's permissions as a scoped signing key's template (`pub`/`sub` allow lists, `resp`).
fn template(permissions: &Permissions) -> Value {
    let mut template = json!({
        "pub": {"allow": permissions.publish},
        "sub": {"allow": permissions.subscribe},
        "subs": -1,
        "data": -1,
        "payload": -1,
    });
    if permissions.respond {
        template["resp"] = json!({"max": 1, "ttl": RESPONSE_TTL_NANOS});
    }
    template
}

/// Names that end up in subjects (member ids, jobs) must be valid tokens; the others are labels.
fn validate_name(role: Role, name: &str) -> Result<(), AuthError> {
    let in_subjects = !matches!(role, Role::Admin | Role::Operator | Role::Observer);
    if in_subjects && MemberId::new(name).is_err() {
        return Err(AuthError::BadName {
            role,
            name: name.to_owned(),
            means: role.name_means(),
        });
    }
    if name.is_empty() || name.contains(['"', '\n', '\r']) {
        return Err(AuthError::BadName {
            role,
            name: name.to_owned(),
            means: role.name_means(),
        });
    }
    Ok(())
}

/// Reads the seed at `path`, or creates one (file mode 0600) with `new`.
fn load_or_create(path: &Path, new: fn() -> KeyPair) -> Result<KeyPair, AuthError> {
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| AuthError::io(path, e))?;
        return KeyPair::from_seed(text.trim())
            .map_err(|e| AuthError::Key(format!("{}: not an nkey seed: {e}", path.display())));
    }
    let key = new();
    let seed = key
        .seed()
        .map_err(|e| AuthError::Key(format!("cannot export a seed: {e}")))?;
    crate::write_secret(path, &format!("{seed}\n"))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deployment_persists_its_keys_and_signs_a_consistent_chain() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = Namespace::new("prod").unwrap();
        let mut deployment = Deployment::open_or_create(dir.path()).unwrap();
        deployment.add_namespace(&namespace).unwrap();
        let account_key = deployment.account_public_key(&namespace).unwrap();
        let reopened = Deployment::open(dir.path()).unwrap();
        assert_eq!(
            reopened.account_public_key(&namespace).unwrap(),
            account_key
        );
        assert_eq!(
            reopened.operator_public_key(),
            deployment.operator_public_key()
        );

        let account = jwt::verify(&reopened.account_jwt(&namespace).unwrap()).unwrap();
        assert_eq!(account["iss"], deployment.operator_public_key());
        assert_eq!(account["sub"], account_key);
        let scopes = account["nats"]["signing_keys"].as_array().unwrap();
        assert_eq!(scopes.len(), Role::ALL.len() - 1, "every role but admin");

        let worker = reopened
            .issue(&namespace, Role::Worker, "w-1", None)
            .unwrap();
        let claims = jwt::verify(&worker.jwt).unwrap();
        assert_eq!(claims["name"], "w-1");
        assert_eq!(claims["sub"], worker.public_key);
        assert_eq!(claims["nats"]["issuer_account"], account_key);
        let scope = scopes
            .iter()
            .find(|scope| scope["key"] == claims["iss"])
            .expect("signed by a scoped key of the account");
        assert_eq!(scope["role"], "worker");
        assert!(
            claims["nats"].get("pub").is_none(),
            "scoped users carry no permissions"
        );

        let admin = reopened
            .issue(&namespace, Role::Admin, "ops", None)
            .unwrap();
        assert_eq!(jwt::verify(&admin.jwt).unwrap()["iss"], account_key);

        let config = reopened.server_config().unwrap();
        assert!(config.contains(&account_key) && config.contains("resolver: MEMORY"));
    }

    #[test]
    fn names_that_go_into_subjects_must_be_tokens() {
        let dir = tempfile::tempdir().unwrap();
        let namespace = Namespace::new("prod").unwrap();
        let mut deployment = Deployment::open_or_create(dir.path()).unwrap();
        deployment.add_namespace(&namespace).unwrap();
        for bad in ["w.1", "*", ">", ""] {
            let error = deployment
                .issue(&namespace, Role::Worker, bad, None)
                .unwrap_err();
            assert!(matches!(error, AuthError::BadName { .. }), "{bad}: {error}");
        }
        assert!(
            deployment
                .issue(&namespace, Role::Operator, "alice smith", None)
                .is_ok()
        );
        let other = Namespace::new("staging").unwrap();
        assert!(matches!(
            deployment.issue(&other, Role::Worker, "w", None),
            Err(AuthError::UnknownNamespace { .. })
        ));
        assert!(matches!(
            Deployment::open(&dir.path().join("nothing")),
            Err(AuthError::NoDeployment { .. })
        ));
    }
}
