//! Secrets kept secret: a feature repo and a config that refer to secrets (`${NAME}`,
//! `${file:PATH}`), run as a user runs them (`cellar plan`, `apply`, `serve`, `backfill`,
//! `jobs`), and every place Cellar writes or answers read back: the registry's files and what
//! it answers, the server's logs at `debug`, `plan`'s output, the jobs API and job pages, and
//! every other file under the data directory. None may hold a secret, as written or
//! percent-encoded.
//!
//! The PostgreSQL test takes its server from `CELLAR_TEST_POSTGRES`, an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres` (`scripts/test.sh` starts a server and sets
//! it); it is ignored by a plain `cargo test`, and fails when asked for without the variable.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use serde_json::Value;
use sqlx::{Connection, Executor};

/// A distinctive value for a secret: found anywhere, it leaked.
fn secret(what: &str) -> String {
    format!("{what}Hush{:016x}", rand::random::<u64>())
}

/// A secret as written and percent-encoded (as a URL or a form would carry it).
fn forms(secret: &str) -> Vec<String> {
    let encoded: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    vec![secret.to_owned(), encoded]
}

/// Asserts that `text`, read from `place`, holds none of `secrets` in any form.
fn assert_kept(place: &str, text: &[u8], secrets: &[String]) {
    let text = String::from_utf8_lossy(text);
    for secret in secrets {
        for form in forms(secret) {
            assert!(
                !text.contains(&form),
                "{place} holds the secret `{form}`:\n{text}"
            );
        }
    }
}

/// Every file under `dir`, with its bytes.
fn files_under(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                out.push((path, bytes));
            }
        }
    }
    out
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// A feature repo, a config file and the addresses of one server.
struct Env {
    dir: tempfile::TempDir,
    listen: String,
    grpc: String,
    /// Environment variables every `cellar` run gets: the secrets themselves.
    vars: Vec<(String, String)>,
}

impl Env {
    fn new(config: &str, vars: Vec<(String, String)>) -> Env {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("repo")).unwrap();
        std::fs::write(dir.path().join("cellar.toml"), config).unwrap();
        Env {
            dir,
            listen: format!("127.0.0.1:{}", common::free_port()),
            grpc: format!("127.0.0.1:{}", common::free_port()),
            vars,
        }
    }

    fn write_repo(&self, file: &str, text: &str) {
        std::fs::write(self.dir.path().join("repo").join(file), text).unwrap();
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(env!("CARGO_BIN_EXE_cellar"));
        c.args(args)
            .arg("--config")
            .arg(self.dir.path().join("cellar.toml"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--repo")
            .arg(self.dir.path().join("repo"))
            .env("RUST_LOG", "debug")
            .env("CELLAR_SERVER__LISTEN", &self.listen)
            .env("CELLAR_SERVER__GRPC_LISTEN", &self.grpc)
            .envs(self.vars.iter().map(|(k, v)| (k, v)));
        c
    }

    fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().expect("run cellar")
    }

    /// `cellar serve`, its stdout and stderr going to files in the test's directory.
    fn serve(&self) -> Server {
        let log = |name: &str| std::fs::File::create(self.dir.path().join(name)).unwrap();
        Server(
            self.command(&["serve"])
                .stdout(Stdio::from(log("serve.stdout")))
                .stderr(Stdio::from(log("serve.stderr")))
                .spawn()
                .expect("start cellar serve"),
        )
    }

    fn server_log(&self) -> Vec<u8> {
        let mut log = std::fs::read(self.dir.path().join("serve.stdout")).unwrap_or_default();
        log.extend(std::fs::read(self.dir.path().join("serve.stderr")).unwrap_or_default());
        log
    }

    fn base(&self) -> String {
        format!("http://{}", self.listen)
    }

    /// Waits for the server's log to hold `needle`.
    async fn wait_for_log(&self, needle: &str) {
        for _ in 0..300 {
            if text(&self.server_log()).contains(needle) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!(
            "the server never logged `{needle}`:\n{}",
            text(&self.server_log())
        );
    }
}

/// A `cellar serve` process, killed when dropped (also when a test fails).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn wait_healthy(base: &str) {
    for _ in 0..300 {
        if reqwest::get(format!("{base}/health"))
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("cellar serve did not answer at {base}");
}

async fn get(url: &str) -> Vec<u8> {
    let answer = reqwest::get(url).await.unwrap();
    assert!(answer.status().is_success(), "{url}: {}", answer.status());
    answer.bytes().await.unwrap().to_vec()
}

const GROUP: &str = r#"kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: FeatureGroup
name: profile
entity: user
type: attribute
features:
  - { name: country, type: string }
"#;

/// An ingestion of `profile` from a PostgreSQL query.
fn postgres_ingestion(name: &str, url: &str, query: &str) -> String {
    format!(
        "---\nkind: Ingestion\nname: {name}\nbatch:\n  postgres:\n    url: \"{url}\"\n    \
         query: \"{query}\"\ninto: profile\nkey: user_id\nfeatures: {{ country: country }}\n"
    )
}

/// The config of the tests' servers: jobs fail at their first error, alerts go to `webhook`.
fn config(webhook_reference: &str, extra: &str) -> String {
    format!(
        "[jobs]\nmax_attempts = 1\npoll_interval_ms = 200\nalert_webhook = \"{webhook_reference}\"\n\n{extra}"
    )
}

/// A Slack-style webhook URL (the URL is the credential) on a port nothing listens on, so
/// every alert fails.
fn unreachable_webhook(token: &str) -> String {
    format!(
        "http://127.0.0.1:{}/services/T0CELLAR/B0ALERTS/{token}",
        common::free_port()
    )
}

#[test]
fn a_spec_with_a_password_written_out_is_refused_at_plan_with_file_and_line() {
    let env = Env::new("", vec![]);
    let written_out = secret("Pg");
    let in_parameter = secret("Pg");
    let repo_text = format!(
        "{GROUP}{}{}{}{}",
        postgres_ingestion(
            "written_out",
            &format!("postgres://reader:{written_out}@db.internal/app"),
            "SELECT 1",
        ),
        postgres_ingestion(
            "in_parameter",
            &format!("postgres://reader@db.internal/app?sslmode=require&password={in_parameter}"),
            "SELECT 1",
        ),
        postgres_ingestion(
            "malformed",
            "postgres://reader:${PG PASSWORD}@db.internal/app",
            "SELECT 1",
        ),
        postgres_ingestion(
            "referred",
            "postgres://reader:${CELLAR_SECRETS_TEST_UNSET}@db.internal/app",
            "SELECT 1",
        ),
    );
    env.write_repo("sources.yaml", &repo_text);
    let line_of = |needle: &str| {
        1 + repo_text
            .lines()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("{needle} is in the repo"))
    };

    for command in ["plan", "apply"] {
        let out = env.run(&[command]);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{command}: {stderr}");
        for (needle, problem) in [
            (
                written_out.as_str(),
                "the URL holds a password after the user name, which would be stored in the \
                 registry: refer to it instead, as `${NAME}` (an environment variable) or \
                 `${file:PATH}`",
            ),
            (
                in_parameter.as_str(),
                "the URL holds a password in its `password` parameter",
            ),
            (
                "${PG PASSWORD}",
                "`${PG PASSWORD}` is not a secret reference",
            ),
        ] {
            let expected = format!(
                "sources.yaml:{}: batch.postgres.url: {problem}",
                line_of(needle)
            );
            assert!(
                stderr.contains(&expected),
                "{command}: {expected}\n{stderr}"
            );
        }
        // The reference to a variable this machine lacks is no error: only where the
        // ingestion runs must it be set.
        assert!(
            !stderr.contains(&format!(
                "sources.yaml:{}",
                line_of("CELLAR_SECRETS_TEST_UNSET")
            )),
            "{stderr}"
        );
        assert_kept(
            &format!("`cellar {command}`"),
            &[out.stdout, out.stderr].concat(),
            &[written_out.clone(), in_parameter.clone()],
        );
    }

    // Without them, the repo plans and applies on a machine without the secret.
    let repo_text = format!(
        "{GROUP}{}",
        postgres_ingestion(
            "referred",
            "postgres://reader:${CELLAR_SECRETS_TEST_UNSET}@db.internal/app",
            "SELECT 1",
        )
    );
    env.write_repo("sources.yaml", &repo_text);
    for command in ["plan", "apply"] {
        let out = env.run(&[command]);
        assert!(out.status.success(), "{command}: {}", text(&out.stderr));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_alert_does_not_print_its_webhook() {
    let token = secret("Hook");
    let webhook = unreachable_webhook(&token);
    let env = Env::new(
        &config("${CELLAR_SECRETS_WEBHOOK}", ""),
        vec![("CELLAR_SECRETS_WEBHOOK".into(), webhook.clone())],
    );
    let missing = env.dir.path().join("input/none-*.parquet");
    env.write_repo(
        "profiles.yaml",
        &format!(
            "{GROUP}---\nkind: Ingestion\nname: profiles\nbatch: {{ files: {{ path: \"{}\" }} }}\n\
             into: profile\nkey: user_id\nfeatures: {{ country: country }}\n",
            missing.display()
        ),
    );
    assert!(env.run(&["apply"]).status.success());
    let server = env.serve();
    wait_healthy(&env.base()).await;
    let out = env.run(&["backfill", "profiles"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    env.wait_for_log("the alert webhook is unreachable").await;
    drop(server);

    let log = env.server_log();
    // Why it failed is still said.
    let warning = text(&log)
        .lines()
        .find(|l| l.contains("the alert webhook is unreachable"))
        .map(str::to_owned)
        .unwrap_or_default();
    assert!(warning.contains("Connection refused"), "{warning}");
    let secrets = [webhook, token];
    assert_kept("the server's log", &log, &secrets);
    assert_kept(
        "`cellar backfill`",
        &[out.stdout, out.stderr].concat(),
        &secrets,
    );
    for (path, bytes) in files_under(&env.data_dir()) {
        assert_kept(&path.display().to_string(), &bytes, &secrets);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL (CELLAR_TEST_POSTGRES); scripts/test.sh starts it"]
async fn no_secret_of_the_config_or_specs_reaches_the_registry_logs_or_job_pages() {
    let admin = common::service_address("CELLAR_TEST_POSTGRES", "PostgreSQL");
    let suffix = format!("{:08x}", rand::random::<u32>());
    let (role, table) = (
        format!("cellar_reader_{suffix}"),
        format!("secret_profiles_{suffix}"),
    );
    let pg_password = secret("Pg");
    let file_password = secret("PgFile");
    let token = secret("Hook");
    let webhook = unreachable_webhook(&token);
    let kafka_password = secret("Kafka");
    let kafka_key_password = secret("KafkaKey");
    let unset = format!("CELLAR_SECRETS_UNSET_{suffix}");

    // A role that logs in with a password, reading one table.
    let mut conn = sqlx::PgConnection::connect(&admin).await.unwrap();
    for statement in [
        format!("CREATE ROLE {role} LOGIN PASSWORD '{pg_password}'"),
        format!("CREATE TABLE {table} (user_id text, country text)"),
        format!("INSERT INTO {table} VALUES ('u1', 'de'), ('u2', 'fr'), ('u3', 'kr')"),
        format!("GRANT SELECT ON {table} TO {role}"),
    ] {
        conn.execute(statement.as_str()).await.unwrap();
    }
    // host:port/database of the admin URL, for the role's.
    let at = admin
        .rsplit_once('@')
        .map_or(admin.trim_start_matches("postgres://"), |(_, r)| r)
        .to_owned();
    let (role_dropped, table_dropped) = (role.clone(), table.clone());

    let result = async move {
        let source_url =
            |password_reference: &str| format!("postgres://{role}:{password_reference}@{at}");
        let env = Env::new(
            &config(
                "${CELLAR_SECRETS_WEBHOOK}",
                &format!(
                    "[ingest.kafka.properties]\n\"sasl.password\" = \"${{CELLAR_SECRETS_KAFKA_PASSWORD}}\"\n\
                     \"ssl.key.password\" = \"{kafka_key_password}\"\n"
                ),
            ),
            vec![
                ("CELLAR_SECRETS_PG_PASSWORD".into(), pg_password.clone()),
                ("CELLAR_SECRETS_WEBHOOK".into(), webhook.clone()),
                ("CELLAR_SECRETS_KAFKA_PASSWORD".into(), kafka_password.clone()),
            ],
        );
        let password_file = env.dir.path().join("pg-password");
        std::fs::write(&password_file, format!("{file_password}\n")).unwrap();
        let query = format!("SELECT user_id, country FROM {table}");
        env.write_repo(
            "profiles.yaml",
            &format!(
                "{GROUP}{}{}{}{}",
                postgres_ingestion(
                    "from_postgres",
                    &source_url("${CELLAR_SECRETS_PG_PASSWORD}"),
                    &query
                ),
                postgres_ingestion(
                    "password_in_a_file",
                    &source_url(&format!("${{file:{}}}", password_file.display())),
                    &query
                ),
                postgres_ingestion(
                    "missing_table",
                    &source_url("${CELLAR_SECRETS_PG_PASSWORD}"),
                    &format!("SELECT user_id, country FROM {table}_missing")
                ),
                postgres_ingestion(
                    "unset_variable",
                    &source_url(&format!("${{{unset}}}")),
                    &query
                ),
            ),
        );
        let mut seen: Vec<(String, Vec<u8>)> = Vec::new();
        let plan = env.run(&["plan"]);
        assert!(plan.status.success(), "{}", text(&plan.stderr));
        assert!(
            text(&plan.stdout).contains("from_postgres"),
            "{}",
            text(&plan.stdout)
        );
        seen.push(("`cellar plan`".into(), [plan.stdout, plan.stderr].concat()));
        let apply = env.run(&["apply"]);
        assert!(apply.status.success(), "{}", text(&apply.stderr));
        seen.push((
            "`cellar apply`".into(),
            [apply.stdout, apply.stderr].concat(),
        ));

        let server = env.serve();
        let base = env.base();
        wait_healthy(&base).await;
        let mut backfill = |ingestion: &str, succeeds: bool| {
            let out = env.run(&["backfill", ingestion]);
            let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
            assert_eq!(
                out.status.success(),
                succeeds,
                "{ingestion}: {stdout}\n{stderr}"
            );
            seen.push((
                format!("`cellar backfill {ingestion}`"),
                [out.stdout, out.stderr].concat(),
            ));
            stdout
        };
        let stdout = backfill("from_postgres", true);
        assert!(
            stdout.contains("succeeded: 3 rows read, 3 written"),
            "{stdout}"
        );
        // The server here lets any password in (trust authentication), but a password file
        // that cannot be read fails the job: this one was read.
        let stdout = backfill("password_in_a_file", true);
        assert!(stdout.contains("succeeded: 3 rows read"), "{stdout}");
        backfill("missing_table", false);
        backfill("unset_variable", false);
        env.wait_for_log("the alert webhook is unreachable").await;

        let jobs = get(&format!("{base}/v1/jobs")).await;
        let listed: Value = serde_json::from_slice(&jobs).unwrap();
        assert_eq!(listed["jobs"].as_array().map(Vec::len), Some(4), "{listed}");
        seen.push(("/v1/jobs".into(), jobs));
        for id in 1..=4 {
            seen.push((
                format!("/v1/jobs/{id}"),
                get(&format!("{base}/v1/jobs/{id}")).await,
            ));
            seen.push((
                format!("/jobs/{id}"),
                get(&format!("{base}/jobs/{id}")).await,
            ));
            let out = env.run(&["jobs", "show", &id.to_string(), "--json"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
            seen.push((
                format!("`cellar jobs show {id}`"),
                [out.stdout, out.stderr].concat(),
            ));
        }
        let out = env.run(&["jobs", "list"]);
        seen.push((
            "`cellar jobs list`".into(),
            [out.stdout, out.stderr].concat(),
        ));

        // Why the failed jobs failed is said, with the source's URL as references show it.
        let failed: Value =
            serde_json::from_slice(&get(&format!("{base}/v1/jobs/3")).await).unwrap();
        let error = failed["job"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(&format!("postgres://{role}:***@")) && error.contains("does not exist"),
            "{failed}"
        );
        let unset_job: Value =
            serde_json::from_slice(&get(&format!("{base}/v1/jobs/4")).await).unwrap();
        let error = unset_job["job"]["error"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(
            error.contains(&format!("environment variable `{unset}` is not set")),
            "{unset_job}"
        );
        drop(server);

        let log = env.server_log();
        // The config's password written out is warned about by its setting's name.
        assert!(
            text(&log).contains("ingest.kafka.properties.\"ssl.key.password\""),
            "{}",
            text(&log)
        );
        seen.push(("the server's log".into(), log));

        // The registry holds the references, never their values.
        let registry =
            cellar_registry::Registry::open(env.data_dir().join("registry.db").to_str().unwrap())
                .await
                .unwrap();
        let applied = registry.current().await.unwrap().expect("an applied repo");
        let snapshot = serde_json::to_string(&applied.repo).unwrap();
        assert!(
            snapshot.contains("${CELLAR_SECRETS_PG_PASSWORD}"),
            "{snapshot}"
        );
        seen.push(("the registry's snapshot".into(), snapshot.into_bytes()));
        for ingestion in [
            "from_postgres",
            "password_in_a_file",
            "missing_table",
            "unset_variable",
        ] {
            let history = registry
                .history(cellar_spec::SpecKind::Ingestion, ingestion)
                .await
                .unwrap();
            assert!(!history.is_empty());
            seen.push((
                format!("the registry's history of {ingestion}"),
                format!("{history:?}").into_bytes(),
            ));
        }
        // Every file under the data directory: the registry's database and its journal, the
        // store, rejected rows.
        for (path, bytes) in files_under(&env.data_dir()) {
            seen.push((path.display().to_string(), bytes));
        }
        let secrets = [
            pg_password.clone(),
            file_password.clone(),
            webhook.clone(),
            token.clone(),
            kafka_password.clone(),
            kafka_key_password.clone(),
        ];
        for (place, bytes) in &seen {
            assert_kept(place, bytes, &secrets);
        }
    };
    // The role and table are dropped whatever the outcome.
    let outcome = tokio::spawn(result).await;
    for statement in [
        format!("DROP TABLE IF EXISTS {table_dropped}"),
        format!("DROP ROLE IF EXISTS {role_dropped}"),
    ] {
        conn.execute(statement.as_str()).await.unwrap();
    }
    if let Err(e) = outcome {
        std::panic::resume_unwind(e.into_panic());
    }
}
