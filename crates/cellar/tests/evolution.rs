//! Schema evolution against a serving node that holds data: reordering lines in a spec never
//! changes what a stored value means, breaking applies are refused, and allowed ones migrate
//! without reading old bytes with a new layout.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use cellar::config::Config;
use cellar::node::Node;
use cellar::repo;
use cellar_registry::{Breaking, Registry, RegistryError};
use serde_json::{json, Value};

const ENTITY: &str = "kind: Entity\nname: user\nkeys: [{ name: user_id, type: string }]\n";

fn group(kind: &str, features: &[(&str, &str)]) -> String {
    let mut text =
        format!("kind: FeatureGroup\nname: user_profile\nentity: user\ntype: {kind}\nfeatures:\n");
    for (name, value_type) in features {
        text.push_str(&format!("  - {{ name: {name}, type: {value_type} }}\n"));
    }
    text
}

struct Node1 {
    base: String,
    client: reqwest::Client,
    registry: Registry,
    repo: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl Node1 {
    /// A node serving `groups_yaml`, reloading the registry every second.
    async fn start(groups_yaml: &str) -> Node1 {
        let dir = tempfile::tempdir().unwrap();
        let mut config = Config {
            data_dir: dir.path().join("data"),
            repo: dir.path().join("repo"),
            ..Config::default()
        };
        config.server.reload_interval_secs = 1;
        std::fs::create_dir_all(&config.repo).unwrap();
        std::fs::write(config.repo.join("entities.yaml"), ENTITY).unwrap();
        std::fs::write(config.repo.join("groups.yaml"), groups_yaml).unwrap();
        let registry = Registry::open(&config.registry_url()).await.unwrap();
        registry
            .apply(&repo::load_repo(&config.repo).unwrap())
            .await
            .unwrap();
        let repo = config.repo.clone();
        let node = Node::open(config).await.unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(node.serve(listener, None, std::future::pending()));
        Node1 {
            base: format!("http://{addr}"),
            client: reqwest::Client::new(),
            registry,
            repo,
            _dir: dir,
        }
    }

    /// Writes the group spec and applies the repo.
    async fn apply(&self, groups_yaml: &str, breaking: Breaking) -> Result<i64, RegistryError> {
        std::fs::write(self.repo.join("groups.yaml"), groups_yaml).unwrap();
        let desired = repo::load_repo(Path::new(&self.repo)).unwrap();
        let outcome = self.registry.apply_with(&desired, breaking).await?;
        Ok(outcome.version)
    }

    async fn post(&self, path: &str, body: Value) -> (u16, Value) {
        let resp = self
            .client
            .post(format!("{}{path}", self.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn push(&self, event_time: &str, features: Value) {
        let (status, body) = self
            .post(
                "/v1/push",
                json!({"group": "user_profile", "records": [
                    {"entity": {"user_id": "u1"}, "event_time": event_time, "features": features}
                ]}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
    }

    /// u1's answer from `user_profile` once the node serves `features` (it reloads the
    /// registry in the background): the feature names and the row.
    async fn read_once_serving(&self, features: &[&str]) -> Value {
        for _ in 0..200 {
            let (status, body) = self
                .post(
                    "/v1/features",
                    json!({"entities": {"user_id": ["u1"]}, "groups": ["user_profile"]}),
                )
                .await;
            assert_eq!(status, 200, "{body}");
            let result = &body["results"][0];
            if result["features"] == json!(features) {
                return result["rows"][0].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node never served features {features:?}");
    }
}

#[tokio::test]
async fn reordering_features_keeps_every_value_under_its_own_name() {
    let node = Node1::start(&group(
        "attribute",
        &[("country", "string"), ("age", "int64")],
    ))
    .await;
    node.push("2026-01-01T00:00:00Z", json!({"country": "NZ", "age": 33}))
        .await;
    let row = node.read_once_serving(&["country", "age"]).await;
    assert_eq!(row["values"], json!(["NZ", 33]));

    // Lines swapped and a feature added on top: not breaking, and nothing moves.
    let version = node
        .apply(
            &group(
                "attribute",
                &[("city", "string"), ("age", "int64"), ("country", "string")],
            ),
            Breaking::Refuse,
        )
        .await
        .unwrap();
    assert_eq!(version, 2);
    let row = node.read_once_serving(&["country", "age", "city"]).await;
    assert_eq!(row["values"], json!(["NZ", 33, null]));

    // New writes in the new file order land at the same positions.
    node.push(
        "2026-01-02T00:00:00Z",
        json!({"city": "Auckland", "age": 34, "country": "NZ"}),
    )
    .await;
    let row = node.read_once_serving(&["country", "age", "city"]).await;
    assert_eq!(row["values"], json!(["NZ", 34, "Auckland"]));
}

#[tokio::test]
async fn breaking_applies_are_refused_and_allowed_ones_never_misread_old_values() {
    let node = Node1::start(&group(
        "attribute",
        &[("country", "string"), ("age", "int64")],
    ))
    .await;
    node.push("2026-01-01T00:00:00Z", json!({"country": "NZ", "age": 33}))
        .await;
    node.read_once_serving(&["country", "age"]).await;

    // A type change is refused, naming it, and changes nothing.
    let retyped = group("attribute", &[("country", "string"), ("age", "string")]);
    let refused = node.apply(&retyped, Breaking::Refuse).await.unwrap_err();
    let message = refused.to_string();
    assert!(
        matches!(refused, RegistryError::Breaking { .. })
            && message.contains("`age` type changed from int64 to string"),
        "{message}"
    );
    assert_eq!(node.registry.current().await.unwrap().unwrap().version, 1);

    // Allowed: the old int64 value is never read as a string's bytes; it is served converted
    // to the new type until written again, and the other feature keeps its value.
    assert_eq!(node.apply(&retyped, Breaking::Allow).await.unwrap(), 2);
    let served = |row: &Value| row["values"].clone();
    let mut row = node.read_once_serving(&["country", "age"]).await;
    for _ in 0..200 {
        if row["values"][1].is_string() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        row = node.read_once_serving(&["country", "age"]).await;
    }
    assert_eq!(served(&row), json!(["NZ", "33"]));
    node.push(
        "2026-01-02T00:00:00Z",
        json!({"country": "NZ", "age": "thirty-four"}),
    )
    .await;
    let row = node.read_once_serving(&["country", "age"]).await;
    assert_eq!(served(&row), json!(["NZ", "thirty-four"]));
    // A write that names only the retyped feature replaces the old value too: a null
    // written now is served as null, not as the old value converted.
    node.push("2026-01-03T00:00:00Z", json!({"age": null}))
        .await;
    let row = node.read_once_serving(&["country", "age"]).await;
    assert_eq!(served(&row), json!(["NZ", null]));
    node.push("2026-01-04T00:00:00Z", json!({"age": "thirty-four"}))
        .await;

    // Removing a feature is refused; allowed, its position is retired, and a feature added
    // later under the same name does not read the old value.
    let removed = group("attribute", &[("age", "string")]);
    assert!(matches!(
        node.apply(&removed, Breaking::Refuse).await,
        Err(RegistryError::Breaking { .. })
    ));
    node.apply(&removed, Breaking::Allow).await.unwrap();
    let row = node.read_once_serving(&["age"]).await;
    assert_eq!(served(&row), json!(["thirty-four"]));
    node.apply(
        &group("attribute", &[("age", "string"), ("country", "string")]),
        Breaking::Refuse,
    )
    .await
    .unwrap();
    let row = node.read_once_serving(&["age", "country"]).await;
    assert_eq!(served(&row), json!(["thirty-four", null]));
}

#[tokio::test]
async fn a_kind_change_serves_the_old_records_laid_out_anew_and_a_recreated_group_starts_empty() {
    let profile = group("attribute", &[("country", "string"), ("age", "int64")]);
    let node = Node1::start(&profile).await;
    node.push("2026-01-01T00:00:00Z", json!({"country": "NZ", "age": 33}))
        .await;
    node.read_once_serving(&["country", "age"]).await;

    // attribute -> timeseries: refused, then a new generation, where the old attribute record
    // is served as a series of one (the age as float64 now) until the entity has its own.
    let series = group("timeseries", &[("age", "float64"), ("country", "string")]);
    let message = node
        .apply(&series, Breaking::Refuse)
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("group type changed"), "{message}");
    node.apply(&series, Breaking::Allow).await.unwrap();
    let read_series = || async {
        for _ in 0..200 {
            let (status, body) = node
                .post(
                    "/v1/features",
                    json!({"entities": {"user_id": ["u1"]}, "groups": ["user_profile"]}),
                )
                .await;
            if status == 200 && body["results"][0]["rows"][0].get("records").is_some() {
                return body["results"][0]["rows"][0]["records"].clone();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the node never served user_profile as a time series");
    };
    let records = read_series().await;
    assert_eq!(records.as_array().unwrap().len(), 1, "{records}");
    assert_eq!(records[0]["values"], json!([33.0, "NZ"]), "{records}");
    assert_eq!(
        records[0]["event_time"], "2026-01-01T00:00:00Z",
        "{records}"
    );

    // A new event of the series comes first; the old record still follows it.
    node.push(
        "2026-01-02T00:00:00Z",
        json!({"age": 34.5, "country": "NZ"}),
    )
    .await;
    let records = read_series().await;
    assert_eq!(records.as_array().unwrap().len(), 2, "{records}");
    assert_eq!(records[0]["values"], json!([34.5, "NZ"]), "{records}");
    assert_eq!(records[1]["values"], json!([33.0, "NZ"]), "{records}");

    // Removing the group is breaking; created again, it does not see the old records.
    std::fs::remove_file(node.repo.join("groups.yaml")).unwrap();
    let desired = repo::load_repo(&node.repo).unwrap();
    assert!(matches!(
        node.registry.apply(&desired).await,
        Err(RegistryError::Breaking { .. })
    ));
    node.registry
        .apply_with(&desired, Breaking::Allow)
        .await
        .unwrap();
    node.apply(&profile, Breaking::Refuse).await.unwrap();
    let applied = node.registry.current().await.unwrap().unwrap();
    let generation = applied.repo.group("user_profile").unwrap().generation;
    assert!(generation > 0, "a re-created group gets a new generation");
    let row = node.read_once_serving(&["country", "age"]).await;
    let mut row = row;
    for _ in 0..200 {
        if row["status"] == "not_found" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        row = node.read_once_serving(&["country", "age"]).await;
    }
    assert_eq!(row["status"], "not_found", "{row}");
}

#[tokio::test]
async fn a_key_type_change_keeps_serving_and_merging_into_the_old_records() {
    let profile = group("attribute", &[("country", "string"), ("age", "int64")]);
    let node = Node1::start(&profile).await;
    let push = |user: Value, time: &str, features: Value| {
        json!({"group": "user_profile", "records": [
            {"entity": {"user_id": user}, "event_time": time, "features": features}
        ]})
    };
    let read = |user: Value| json!({"entities": {"user_id": [user]}, "groups": ["user_profile"]});
    let (status, body) = node
        .post(
            "/v1/push",
            push(
                json!("42"),
                "2026-01-01T00:00:00Z",
                json!({"country": "NZ", "age": 33}),
            ),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // user_id becomes an int64 (and a feature is added, which tells when the node serves the
    // new version): refused, then allowed; the generation moves.
    let with_city = group(
        "attribute",
        &[("country", "string"), ("age", "int64"), ("city", "string")],
    );
    std::fs::write(
        node.repo.join("entities.yaml"),
        ENTITY.replace("type: string", "type: int64"),
    )
    .unwrap();
    let message = node
        .apply(&with_city, Breaking::Refuse)
        .await
        .unwrap_err()
        .to_string();
    assert!(message.contains("key"), "{message}");
    node.apply(&with_city, Breaking::Allow).await.unwrap();
    let mut row = Value::Null;
    for _ in 0..200 {
        let (status, body) = node.post("/v1/features", read(json!(42))).await;
        if status == 200 && body["results"][0]["features"].as_array().map(Vec::len) == Some(3) {
            row = body["results"][0]["rows"][0].clone();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(row["values"], json!(["NZ", 33, null]), "{row}");

    // A write of one feature into the new generation keeps the other from the old record.
    let (status, body) = node
        .post(
            "/v1/push",
            push(json!(42), "2026-01-02T00:00:00Z", json!({"age": 34})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (_, body) = node.post("/v1/features", read(json!(42))).await;
    assert_eq!(
        body["results"][0]["rows"][0]["values"],
        json!(["NZ", 34, null]),
        "{body}"
    );
    let applied = node.registry.current().await.unwrap().unwrap();
    assert!(applied.repo.group("user_profile").unwrap().generation > 0);
}
