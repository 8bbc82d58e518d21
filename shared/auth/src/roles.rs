//! The permission model: for each role of a namespace, exactly which subjects it may publish and
//! subscribe. `docs/security.md` explains every line; the auth tests run each component under
//! these permissions and try every forbidden action.
//!
//! Subjects may contain two NATS permission templates, filled in by the server from the user's
//! JWT when it connects: `{{name()}}` (the user's name = the member id of a worker or service
//! replica, the job of a planner) and `{{subject()}}` (the user's public nkey, which makes its
//! private reply inbox `_INBOX.<public key>`; see [`inbox_prefix`]).
//!
//! Nobody but [`Role::Admin`] may create, update or delete a stream, or delete a durable
//! consumer: the other roles only read buckets through direct gets and ephemeral ordered
//! consumers, write their own keys, and use the provisioned progress consumer — which the
//! assigner alone may re-create (under its own name) when it has disappeared, and whose applied
//! reports it alone may purge.

use elk_protocol::admin::READ_ONLY_VERBS;
use elk_protocol::names::{Names, PLACEMENT_KEY, PROGRESS_CONSUMER};

/// The assigner verbs the scaler sends for a drain-first scale-in.
const SCALER_VERBS: [&str; 3] = ["members", "drain", "undrain"];
use serde::Serialize;

/// The member id of a worker or service replica (or the job of a planner): the user's JWT name.
pub const NAME: &str = "{{name()}}";
/// The user's public nkey.
pub const SUBJECT: &str = "{{subject()}}";

/// The reply-inbox prefix of a client whose user public key is `public_key`. ELK's clients use it
/// by default when they authenticate with an nkey (`.creds` or seed), and every role may
/// subscribe only below its own: no client can read another's replies (JetStream API answers,
/// KV reads, watch deliveries).
pub fn inbox_prefix(public_key: &str) -> String {
    format!("_INBOX.{public_key}")
}

/// Who a NATS identity is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Provisions (creates, updates, deletes) streams and consumers; unrestricted in the account.
    Admin,
    /// An election replica; its name is its member id.
    Election,
    /// An assigner replica; its name is its member id.
    Assigner,
    /// A scaler replica; its name is its member id.
    Scaler,
    /// A worker; its name is its member id.
    Worker,
    /// The planner of one open-ended job; its name is the job.
    Planner,
    /// An operator (`elkctl`): every admin command, read access to the control-plane buckets.
    Operator,
    /// A read-only observer: the read-only admin commands and the control-plane buckets.
    Observer,
}

impl Role {
    pub const ALL: [Role; 8] = [
        Role::Admin,
        Role::Election,
        Role::Assigner,
        Role::Scaler,
        Role::Worker,
        Role::Planner,
        Role::Operator,
        Role::Observer,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Election => "election",
            Role::Assigner => "assigner",
            Role::Scaler => "scaler",
            Role::Worker => "worker",
            Role::Planner => "planner",
            Role::Operator => "operator",
            Role::Observer => "observer",
        }
    }

    pub fn parse(text: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.as_str() == text)
    }

    /// What the user's name must be: a member id, a job, or anything.
    pub const fn name_means(self) -> &'static str {
        match self {
            Role::Election | Role::Assigner | Role::Scaler | Role::Worker => "its member id",
            Role::Planner => "the job it plans",
            Role::Admin | Role::Operator | Role::Observer => "a label of your choice",
        }
    }

    /// The role's permissions in `names`' namespace; `None` for [`Role::Admin`] (unrestricted).
    pub fn permissions(self, names: &Names) -> Option<Permissions> {
        let subjects = Subjects::new(names);
        let mut p = Permissions::default();
        // Its own reply inbox: subscribe (replies, watch deliveries) and publish (a round trip
        // to itself, e.g. the planner's check that the server has its subscription).
        let inbox = format!("_INBOX.{SUBJECT}.>");
        p.subscribe.push(inbox.clone());
        p.publish.push(inbox);
        match self {
            Role::Admin => return None,
            Role::Worker => {
                p.own_member_key(&subjects);
                p.publish
                    .push(format!("elk.{}.progress.{NAME}", subjects.ns));
                // Its own assignment key only: a direct get of that key, and an ordered
                // consumer (any name) whose filter is that key — the filter is part of the
                // API subject, so the server refuses any other filter.
                let assignments = subjects.bucket("assignments");
                p.publish.push(assignments.direct_get(NAME));
                p.publish.push(assignments.filtered_consumer(NAME));
                p.publish.push(assignments.flow_control());
                // Removing a stalled watch before re-creating it: consumer names are random and
                // no role may list them, so nobody can name another's watch.
                p.publish.push(assignments.delete_consumer());
            }
            Role::Planner => {
                p.subscribe.push(format!("elk.{}.plan.{NAME}", subjects.ns));
                p.respond = true;
            }
            Role::Election => {
                p.service(&subjects);
                p.read(&subjects, &["members", "leases"]);
                p.publish.push(subjects.bucket("leases").write_any());
                // Leadership transfer requests (`elkctl transfer`), answered by the active replica.
                p.subscribe
                    .push(format!("elk.{}.admin.election.>", subjects.ns));
                p.respond = true;
            }
            Role::Assigner => {
                p.service(&subjects);
                p.read(
                    &subjects,
                    &["leases", "jobs", "partitions", "assignments", "fleet"],
                );
                for bucket in ["jobs", "partitions", "assignments"] {
                    p.publish.push(subjects.bucket(bucket).write_any());
                }
                // The placement levers (drain, freeze), so a new leader continues them.
                p.publish
                    .push(subjects.bucket("fleet").write_key(PLACEMENT_KEY));
                // Compaction by range: one purge of a job's compacted keys below a revision. No
                // stronger than the key writes above, which may already delete every key.
                p.publish.push(format!(
                    "$JS.API.STREAM.PURGE.{}",
                    subjects.bucket("partitions").stream()
                ));
                p.progress_consumer(names);
                // Admin requests: served by the leader; forwarded by every replica's HTTP API.
                let admin = format!("elk.{}.admin.assigner.>", subjects.ns);
                p.subscribe.push(admin.clone());
                p.publish.push(admin);
                p.publish.push(format!("elk.{}.plan.*", subjects.ns));
                p.respond = true;
            }
            Role::Scaler => {
                p.service(&subjects);
                p.read(&subjects, &["leases", "jobs", "fleet"]);
                p.publish
                    .push(subjects.bucket("fleet").write_key("desired"));
                // Drain-first scale-in: the live members, then drain / undrain requests.
                for verb in SCALER_VERBS {
                    p.publish
                        .push(format!("elk.{}.admin.assigner.{verb}", subjects.ns));
                }
            }
            Role::Operator => {
                p.observe(&subjects);
                p.publish
                    .push(format!("elk.{}.admin.assigner.*", subjects.ns));
                p.publish
                    .push(format!("elk.{}.admin.election.*", subjects.ns));
            }
            Role::Observer => {
                p.observe(&subjects);
                for verb in READ_ONLY_VERBS {
                    p.publish
                        .push(format!("elk.{}.admin.assigner.{verb}", subjects.ns));
                }
            }
        }
        p.dedup();
        Some(p)
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The subjects a role may publish and subscribe (allow lists: everything else is denied), and
/// whether it may answer requests it received (`allow_responses`: one reply per request).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    pub respond: bool,
}

impl Permissions {
    /// The subjects with the templates filled in, as the server does for user `name` with public
    /// key `public_key`.
    pub fn expand(&self, name: &str, public_key: &str) -> Permissions {
        let fill = |subjects: &[String]| {
            subjects
                .iter()
                .map(|s| s.replace(NAME, name).replace(SUBJECT, public_key))
                .collect()
        };
        Permissions {
            publish: fill(&self.publish),
            subscribe: fill(&self.subscribe),
            respond: self.respond,
        }
    }

    /// Drops repeated subjects, keeping the first of each.
    fn dedup(&mut self) {
        for list in [&mut self.publish, &mut self.subscribe] {
            let mut seen = std::collections::HashSet::new();
            list.retain(|subject| seen.insert(subject.clone()));
        }
    }

    /// A member's own key: create, renew, delete (publishes) and read it back (direct get).
    fn own_member_key(&mut self, subjects: &Subjects) {
        let members = subjects.bucket("members");
        self.publish.push(members.write_key(NAME));
        self.publish.push(members.direct_get(NAME));
    }

    /// What every service replica needs: its member key, and binding every bucket and the
    /// progress stream (stream info: configuration and counts, never a value).
    fn service(&mut self, subjects: &Subjects) {
        self.own_member_key(subjects);
        // A restarted replica waits for its previous member key to expire by watching it.
        let members = subjects.bucket("members");
        self.publish.push(members.filtered_consumer(NAME));
        self.publish.push(members.flow_control());
        self.publish.push(members.delete_consumer());
        for bucket in BUCKETS {
            self.publish.push(subjects.bucket(bucket).stream_info());
        }
        self.publish
            .push(format!("$JS.API.STREAM.INFO.{}", subjects.progress_stream));
    }

    /// The assigner's durable consumer of the progress stream: pull, ack, inspect (its ack floor
    /// is the reclaim barrier); re-create it under its own name, with no filter, when it has
    /// disappeared (the subject carries the name, so no other consumer; a re-creation with a
    /// different config than the existing one is refused by the server); list the stream's
    /// consumers and purge the stream, to trim the reports every consumer has acked. Deleting
    /// the consumer, changing or deleting the stream stays admin's. The purge is as strong as
    /// acking, which the assigner already may: a report it acks is one it is trusted to apply.
    fn progress_consumer(&mut self, names: &Names) {
        let stream = names.progress_stream();
        let api = "$JS.API";
        self.publish.extend([
            format!("{api}.STREAM.INFO.{stream}"),
            format!("{api}.CONSUMER.INFO.{stream}.{PROGRESS_CONSUMER}"),
            format!("{api}.CONSUMER.MSG.NEXT.{stream}.{PROGRESS_CONSUMER}"),
            format!("$JS.ACK.{stream}.{PROGRESS_CONSUMER}.>"),
            format!("{api}.CONSUMER.CREATE.{stream}.{PROGRESS_CONSUMER}"),
            format!("{api}.CONSUMER.LIST.{stream}"),
            format!("{api}.STREAM.PURGE.{stream}"),
        ]);
    }

    /// Reads (direct gets) and watches (ordered consumers) of whole buckets.
    fn read(&mut self, subjects: &Subjects, buckets: &[&str]) {
        for bucket in buckets {
            let bucket = subjects.bucket(bucket);
            self.publish.extend(bucket.read_all());
        }
    }

    /// `elkctl status` and friends: bind and read the control-plane buckets.
    fn observe(&mut self, subjects: &Subjects) {
        for bucket in BUCKETS {
            self.publish.push(subjects.bucket(bucket).stream_info());
        }
        self.publish
            .push(format!("$JS.API.STREAM.INFO.{}", subjects.progress_stream));
        self.read(subjects, &["members", "leases", "jobs", "fleet"]);
    }
}

const BUCKETS: [&str; 6] = [
    "members",
    "leases",
    "jobs",
    "partitions",
    "assignments",
    "fleet",
];

/// Subject builders of one namespace.
struct Subjects {
    ns: String,
    names: Names,
    progress_stream: String,
}

impl Subjects {
    fn new(names: &Names) -> Self {
        Self {
            ns: names.namespace().to_string(),
            names: names.clone(),
            progress_stream: names.progress_stream(),
        }
    }

    fn bucket(&self, what: &str) -> BucketSubjects {
        let name = match what {
            "members" => self.names.members_bucket(),
            "leases" => self.names.leases_bucket(),
            "jobs" => self.names.jobs_bucket(),
            "partitions" => self.names.partitions_bucket(),
            "assignments" => self.names.assignments_bucket(),
            "fleet" => self.names.fleet_bucket(),
            other => unreachable!("no bucket {other}"),
        };
        BucketSubjects { name }
    }
}

/// The subjects of one KV bucket `B`: keys `$KV.B.<key>`, stream `KV_B`.
struct BucketSubjects {
    name: String,
}

impl BucketSubjects {
    fn stream(&self) -> String {
        format!("KV_{}", self.name)
    }

    fn write_key(&self, key: &str) -> String {
        format!("$KV.{}.{key}", self.name)
    }

    fn write_any(&self) -> String {
        self.write_key(">")
    }

    fn stream_info(&self) -> String {
        format!("$JS.API.STREAM.INFO.{}", self.stream())
    }

    fn direct_get(&self, key: &str) -> String {
        format!(
            "$JS.API.DIRECT.GET.{}.{}",
            self.stream(),
            self.write_key(key)
        )
    }

    /// An ordered consumer of any name filtered to exactly `key`.
    fn filtered_consumer(&self, key: &str) -> String {
        format!(
            "$JS.API.CONSUMER.CREATE.{}.*.{}",
            self.stream(),
            self.write_key(key)
        )
    }

    /// Flow-control replies of ordered push consumers on this stream.
    fn flow_control(&self) -> String {
        format!("$JS.FC.{}.>", self.stream())
    }

    /// Deleting a consumer of this stream by name (ordered consumers are re-created after a stall).
    fn delete_consumer(&self) -> String {
        format!("$JS.API.CONSUMER.DELETE.{}.*", self.stream())
    }

    /// Direct gets of any key, ordered consumers with any filter (and their clean-up).
    fn read_all(&self) -> Vec<String> {
        let stream = self.stream();
        vec![
            format!("$JS.API.DIRECT.GET.{stream}.>"),
            format!("$JS.API.CONSUMER.CREATE.{stream}"),
            format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
            self.delete_consumer(),
            self.flow_control(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use elk_types::Namespace;

    fn names() -> Names {
        Names::new(Namespace::new("prod").unwrap())
    }

    #[test]
    fn a_worker_touches_only_its_own_keys_and_subject() {
        let worker = Role::Worker
            .permissions(&names())
            .unwrap()
            .expand("w-1", "UKEY");
        assert_eq!(
            worker.publish,
            vec![
                "_INBOX.UKEY.>",
                "$KV.elk_prod_members.w-1",
                "$JS.API.DIRECT.GET.KV_elk_prod_members.$KV.elk_prod_members.w-1",
                "elk.prod.progress.w-1",
                "$JS.API.DIRECT.GET.KV_elk_prod_assignments.$KV.elk_prod_assignments.w-1",
                "$JS.API.CONSUMER.CREATE.KV_elk_prod_assignments.*.$KV.elk_prod_assignments.w-1",
                "$JS.FC.KV_elk_prod_assignments.>",
                "$JS.API.CONSUMER.DELETE.KV_elk_prod_assignments.*",
            ]
        );
        assert_eq!(worker.subscribe, vec!["_INBOX.UKEY.>"]);
        assert!(!worker.respond);
    }

    #[test]
    fn only_admin_manages_streams_and_only_the_assigner_writes_its_buckets() {
        for role in Role::ALL {
            let Some(permissions) = role.permissions(&names()) else {
                assert_eq!(role, Role::Admin);
                continue;
            };
            for subject in &permissions.publish {
                // The assigner's own progress consumer and the trimming of its stream are the
                // only exceptions (`the_assigner_re_creates_only_its_own_consumer`).
                if role == Role::Assigner
                    && (ASSIGNER_PROGRESS_MANAGEMENT.contains(&subject.as_str())
                        || subject == ASSIGNER_RANGE_PURGE)
                {
                    continue;
                }
                for forbidden in [
                    "STREAM.CREATE",
                    "STREAM.UPDATE",
                    "STREAM.DELETE",
                    "STREAM.PURGE",
                    "CONSUMER.DURABLE",
                    "CONSUMER.LIST",
                    "$JS.API.>",
                ] {
                    assert!(!subject.contains(forbidden), "{role}: {subject}");
                }
                if subject.starts_with("$JS.API.CONSUMER.CREATE.ELK_")
                    || subject.starts_with("$JS.API.CONSUMER.DELETE.ELK_")
                {
                    panic!("{role} may manage the progress consumer: {subject}");
                }
                let writes = |bucket: &str| subject.starts_with(&format!("$KV.elk_prod_{bucket}."));
                if writes("jobs") || writes("partitions") || writes("assignments") {
                    assert_eq!(role, Role::Assigner, "{subject}");
                }
                if writes("leases") {
                    assert_eq!(role, Role::Election, "{subject}");
                }
            }
        }
    }

    /// What the assigner may do to the progress stream beyond consuming it.
    const ASSIGNER_PROGRESS_MANAGEMENT: [&str; 3] = [
        "$JS.API.CONSUMER.CREATE.ELK_prod_PROGRESS.assigner",
        "$JS.API.CONSUMER.LIST.ELK_prod_PROGRESS",
        "$JS.API.STREAM.PURGE.ELK_prod_PROGRESS",
    ];

    /// Compaction by range of the partitions bucket, which the assigner writes anyway.
    const ASSIGNER_RANGE_PURGE: &str = "$JS.API.STREAM.PURGE.KV_elk_prod_partitions";

    #[test]
    fn only_the_assigner_purges_the_partitions_bucket_by_range() {
        for role in Role::ALL {
            let Some(permissions) = role.permissions(&names()) else {
                continue;
            };
            let purges = permissions
                .publish
                .iter()
                .any(|subject| subject == ASSIGNER_RANGE_PURGE);
            assert_eq!(purges, role == Role::Assigner, "{role}");
        }
    }

    #[test]
    fn the_assigner_re_creates_only_its_own_consumer() {
        let assigner = Role::Assigner.permissions(&names()).unwrap();
        let managing: Vec<_> = assigner
            .publish
            .iter()
            .filter(|subject| {
                ["CREATE", "DELETE", "UPDATE", "PURGE", "LIST", "DURABLE"]
                    .iter()
                    .any(|verb| subject.contains(verb))
                    && !subject.contains("KV_")
            })
            .map(String::as_str)
            .collect();
        assert_eq!(managing, ASSIGNER_PROGRESS_MANAGEMENT);
        for role in Role::ALL.into_iter().filter(|role| *role != Role::Assigner) {
            let Some(permissions) = role.permissions(&names()) else {
                continue;
            };
            for subject in ASSIGNER_PROGRESS_MANAGEMENT {
                assert!(!permissions.publish.iter().any(|s| s == subject), "{role}");
            }
        }
    }

    #[test]
    fn observers_send_only_read_only_admin_verbs() {
        let observer = Role::Observer.permissions(&names()).unwrap();
        let admin: Vec<_> = observer
            .publish
            .iter()
            .filter(|s| s.starts_with("elk.prod.admin."))
            .collect();
        assert_eq!(admin.len(), READ_ONLY_VERBS.len());
        assert!(!admin.iter().any(|s| s.ends_with("create_job")));
        assert_eq!(Role::parse("observer"), Some(Role::Observer));
        assert_eq!(Role::parse("root"), None);
    }
}
