//! Unit tests of the IAM key source, with a scripted IamApi.

use super::*;
use std::sync::atomic::AtomicUsize;

#[test]
fn widdix_spellings_both_ways() {
    assert_eq!(
        iam_user_for_login("first.last.at.example.com"),
        "first.last@example.com"
    );
    assert_eq!(iam_user_for_login("a.plus.b.equal.c.comma.d"), "a+b=c,d");
    assert_eq!(
        iam_user_for_login("x.at.y.at.z"),
        "x@y@z",
        "every occurrence"
    );
    assert_eq!(iam_user_for_login("alice"), "alice");
    assert_eq!(widdix_login("a+b=c,d@e"), "a.plus.b.equal.c.comma.d.at.e");
    for name in ["alice", "a+b=c,d@e.f", "first.last@example.com"] {
        assert_eq!(iam_user_for_login(&widdix_login(name)), name);
    }
}

#[test]
fn the_policy_document_grants_exactly_what_is_called() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/iam/key-reader-policy.json")).unwrap();
    let mut granted: Vec<String> = doc["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|st| st["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    granted.sort();
    let mut called: Vec<String> = IAM_ACTIONS.iter().map(|s| s.to_string()).collect();
    called.sort();
    assert_eq!(granted, called);
}

#[test]
fn names_and_arns() {
    assert!(validate_user_name("alice@example.com").is_ok());
    assert!(validate_user_name("a_b+c=d,e.f-g").is_ok());
    assert!(validate_user_name(&"a".repeat(64)).is_ok());
    assert!(validate_user_name(&"a".repeat(65))
        .unwrap_err()
        .contains("1 to 64"));
    assert!(validate_user_name("a b").unwrap_err().contains("' '"));
    assert!(validate_user_name("").is_err());
    assert!(validate_group_name("bastion-users").is_ok());
    assert!(validate_group_name("ops/admins").is_err());
    assert!(validate_role_arn("arn:aws:iam::123456789012:role/bastion-key-reader").is_ok());
    assert!(validate_role_arn("arn:aws-cn:iam::123456789012:role/path/r").is_ok());
    for bad in [
        "arn:aws:iam::12345678901:role/x",
        "arn:aws:iam::123456789012:user/x",
        "arn:aws:sts::123456789012:role/x",
        "arn:aws:iam::123456789012:role/",
        "role/x",
    ] {
        assert!(validate_role_arn(bad).is_err(), "{bad}");
    }
}

/// (keys as (id, active, body), groups) of one fake user.
type FakeUser = (Vec<(String, bool, String)>, Vec<String>);

/// A scripted IAM: users, keys and groups in memory, a call counter, and
/// a switch that makes every call fail.
#[derive(Default)]
struct Fake {
    users: Mutex<HashMap<String, FakeUser>>,
    calls: AtomicUsize,
    failing: Mutex<Option<ApiErrorKind>>,
    delay: Duration,
}

impl Fake {
    fn add(&self, user: &str, keys: &[(&str, bool, &str)], groups: &[&str]) {
        self.users.lock().unwrap().insert(
            user.into(),
            (
                keys.iter()
                    .map(|(i, a, b)| (i.to_string(), *a, b.to_string()))
                    .collect(),
                groups.iter().map(|g| g.to_string()).collect(),
            ),
        );
    }
    async fn call(&self) -> Result<(), ApiError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        match self.failing.lock().unwrap().clone() {
            Some(kind) => Err(ApiError {
                kind,
                message: "Throttling: Rate exceeded".into(),
            }),
            None => Ok(()),
        }
    }
    fn user(&self, name: &str) -> Option<FakeUser> {
        self.users
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }
}

impl IamApi for Arc<Fake> {
    async fn get_user(&self, name: &str) -> ApiResult<(String, String)> {
        self.call().await?;
        let users = self.users.lock().unwrap();
        Ok(users
            .keys()
            .find(|k| k.eq_ignore_ascii_case(name))
            .map(|k| (k.clone(), format!("arn:aws:iam::123456789012:user/{k}"))))
    }
    async fn list_keys(&self, name: &str) -> ApiResult<Vec<(String, bool)>> {
        self.call().await?;
        Ok(self
            .user(name)
            .map(|(keys, _)| keys.into_iter().map(|(i, a, _)| (i, a)).collect()))
    }
    async fn get_key(&self, name: &str, id: &str) -> ApiResult<String> {
        self.call().await?;
        Ok(self
            .user(name)
            .and_then(|(keys, _)| keys.into_iter().find(|k| k.0 == id).map(|k| k.2)))
    }
    async fn list_groups(&self, name: &str) -> ApiResult<Vec<String>> {
        self.call().await?;
        Ok(self.user(name).map(|(_, g)| g))
    }
}

fn settings(groups: &[&str]) -> Settings {
    Settings {
        groups: groups.iter().map(|g| g.to_string()).collect(),
        want_groups: false,
        cache_ttl: Duration::from_secs(60),
        stale_ttl: Duration::from_secs(3600),
        negative_ttl: Duration::from_secs(10),
        timeout: Duration::from_secs(5),
        cache_dir: None,
    }
}

fn source(fake: &Arc<Fake>, s: Settings) -> Arc<IamSource<Arc<Fake>>> {
    Arc::new(IamSource::new(fake.clone(), s))
}

/// Pretends the cached answer for `user` was fetched `ago`.
async fn age_entry(src: &IamSource<Arc<Fake>>, user: &str, ago: Duration) {
    let slot = src.slots.lock().unwrap().get(user).unwrap().clone();
    let mut slot = slot.lock().await;
    let c = slot.cached.as_mut().unwrap();
    c.at = SystemTime::now() - ago;
}

#[tokio::test]
async fn caches_and_reuses_key_material() {
    let fake = Arc::new(Fake::default());
    fake.add(
        "alice",
        &[
            ("K1", true, "ssh-rsa AAAA1"),
            ("K2", false, "ssh-rsa AAAA2"),
        ],
        &[],
    );
    let src = source(&fake, settings(&[]));
    let a = src.lookup("alice").await.unwrap();
    assert_eq!(a.freshness, Freshness::Fresh);
    // GetUser + ListSSHPublicKeys + two GetSSHPublicKey.
    assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
    for _ in 0..10 {
        let again = src.lookup("ALICE").await.unwrap();
        assert!(matches!(again.freshness, Freshness::Cached { .. }));
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        4,
        "cached answers cost nothing"
    );
    // Past cache_ttl: one ListSSHPublicKeys, no GetUser, no GetSSHPublicKey for known ids.
    age_entry(&src, "alice", Duration::from_secs(61)).await;
    let b = src.lookup("alice").await.unwrap();
    assert_eq!(b.freshness, Freshness::Fresh);
    assert_eq!(fake.calls.load(Ordering::SeqCst), 5);
    match &*b.record {
        Record::User(u) => {
            assert_eq!(u.arn, "arn:aws:iam::123456789012:user/alice");
            let keys = u.keys.as_ref().unwrap();
            assert_eq!(keys.len(), 2);
            assert!(keys[0].active && !keys[1].active);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn concurrent_first_lookups_coalesce() {
    let fake = Arc::new(Fake {
        delay: Duration::from_millis(50),
        ..Default::default()
    });
    fake.add("bob", &[("K1", true, "ssh-rsa AAAA1")], &[]);
    let src = source(&fake, settings(&[]));
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move { src.lookup("bob").await.unwrap() })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        3,
        "one GetUser, one list, one get"
    );
}

#[tokio::test]
async fn unknown_users_are_remembered_for_negative_ttl() {
    let fake = Arc::new(Fake::default());
    let src = source(&fake, settings(&[]));
    assert_eq!(
        *src.lookup("nobody").await.unwrap().record,
        Record::NoSuchUser
    );
    assert_eq!(
        *src.lookup("nobody").await.unwrap().record,
        Record::NoSuchUser
    );
    assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    age_entry(&src, "nobody", Duration::from_secs(11)).await;
    fake.add("nobody", &[], &[]);
    assert!(matches!(
        *src.lookup("nobody").await.unwrap().record,
        Record::User(_)
    ));
}

#[tokio::test]
async fn non_members_keys_are_not_listed() {
    let fake = Arc::new(Fake::default());
    fake.add("carol", &[("K1", true, "ssh-rsa AAAA1")], &["other"]);
    let src = source(&fake, settings(&["Bastion-Users"]));
    let a = src.lookup("carol").await.unwrap();
    match &*a.record {
        Record::User(u) => {
            assert_eq!(u.groups.as_deref(), Some(&["other".to_string()][..]));
            assert_eq!(u.keys, None);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        2,
        "GetUser + ListGroupsForUser only"
    );
    fake.add("dave", &[("K1", true, "ssh-rsa AAAA1")], &["bastion-users"]);
    match &*src.lookup("dave").await.unwrap().record {
        Record::User(u) => assert_eq!(
            u.keys.as_ref().map(Vec::len),
            Some(1),
            "group names ignore case"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn outages_serve_stale_then_fail_closed() {
    let fake = Arc::new(Fake::default());
    fake.add("erin", &[("K1", true, "ssh-rsa AAAA1")], &[]);
    let src = source(&fake, settings(&[]));
    src.lookup("erin").await.unwrap();
    *fake.failing.lock().unwrap() = Some(ApiErrorKind::Throttled);
    age_entry(&src, "erin", Duration::from_secs(120)).await;
    let calls = fake.calls.load(Ordering::SeqCst);
    let a = src.lookup("erin").await.unwrap();
    match &a.freshness {
        Freshness::Stale { why, .. } => assert!(why.contains("throttling"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls + 1);
    // Backing off: the next lookups do not call IAM.
    for _ in 0..5 {
        let a = src.lookup("erin").await.unwrap();
        match &a.freshness {
            Freshness::Stale { why, .. } => assert!(why.contains("backing off"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        fake.calls.load(Ordering::SeqCst),
        calls + 1,
        "no calls while backing off"
    );
    // A user with nothing cached still asks, and fails closed.
    let e = src.lookup("frank").await.unwrap_err();
    assert!(e.0.contains("no earlier answer"), "{}", e.0);
    // Past stale_ttl: fail closed, with the age in the reason.
    age_entry(&src, "erin", Duration::from_secs(3601)).await;
    let e = src.lookup("erin").await.unwrap_err();
    assert!(e.0.contains("past stale_ttl"), "{}", e.0);
    // IAM is back: fresh again, and the back-off is over.
    *fake.failing.lock().unwrap() = None;
    src.backoff.lock().unwrap().until = None;
    assert_eq!(
        src.lookup("erin").await.unwrap().freshness,
        Freshness::Fresh
    );
}

#[tokio::test]
async fn an_empty_answer_is_not_an_outage() {
    let fake = Arc::new(Fake::default());
    fake.add("gina", &[("K1", true, "ssh-rsa AAAA1")], &[]);
    let src = source(&fake, settings(&[]));
    src.lookup("gina").await.unwrap();
    fake.add("gina", &[], &[]);
    age_entry(&src, "gina", Duration::from_secs(61)).await;
    match &*src.lookup("gina").await.unwrap().record {
        Record::User(u) => assert_eq!(u.keys.as_ref().map(Vec::len), Some(0)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn disk_cache_survives_a_restart_and_rejects_foreign_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).unwrap();
    let fake = Arc::new(Fake::default());
    fake.add("hank", &[("K1", true, "ssh-rsa AAAA1")], &[]);
    let mut s = settings(&[]);
    s.cache_dir = Some(dir.path().into());
    source(&fake, s.clone()).lookup("hank").await.unwrap();
    let file = dir.path().join("iam-user-hank.json");
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );
    // A new process while IAM is down: the disk answer is used, without a call.
    *fake.failing.lock().unwrap() = Some(ApiErrorKind::Unavailable);
    let calls = fake.calls.load(Ordering::SeqCst);
    let a = source(&fake, s.clone()).lookup("hank").await.unwrap();
    assert!(matches!(a.freshness, Freshness::Cached { .. }));
    assert_eq!(fake.calls.load(Ordering::SeqCst), calls);
    // A cache file others may write is ignored (fail closed).
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
    assert!(source(&fake, s).lookup("hank").await.is_err());
}
