//! `cellar quickstart`: an example feature repo, applied, with deterministic sample data, then
//! served.

use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use cellar_cache::WritePath;
use cellar_spec::{EntityKey, FeatureRepo, Value};
use cellar_store::{Record, Write};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Users `u0` .. `u{USERS-1}`.
pub const USERS: usize = 10_000;
/// Articles `a0` .. `a{ARTICLES-1}`.
pub const ARTICLES: usize = 100_000;

/// The example feature repo, as files.
pub const EXAMPLE_REPO: &[(&str, &str)] = &[
    (
        "entities.yaml",
        r#"# What features describe.
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
description: A person using the app
---
kind: Entity
name: article
keys: [{ name: article_id, type: string }]
description: A marketplace article
"#,
    ),
    (
        "user.yaml",
        r#"kind: FeatureGroup
name: user_profile
entity: user
type: attribute
description: Profile attributes, one current record per user
features:
  - { name: country, type: string }
  - { name: age, type: int64 }
  - { name: keywords, type: list<string> }
serving: { tiers: [local], soft_ttl: 30s, hard_ttl: 10m, jitter: 10%, negative_ttl: 30s, write: through }
---
kind: FeatureGroup
name: recent_clicked_articles
entity: user
type: timeseries
description: Articles a user clicked, newest first
features:
  - { name: article_id, type: string }
  - { name: session_id, type: string }
retention: { max_records: 100, max_age: 30d }
serving: { tiers: [local], soft_ttl: 10s, hard_ttl: 5m, jitter: 10%, negative_ttl: 30s, write: through }
---
kind: Ingestion
name: article_clicks
stream: { topic: user-actions, event_types: [article_clicked], format: json }
into: recent_clicked_articles
key: $.user_id
event_time: $.ts
features: { article_id: $.article_id, session_id: $.session_id }
"#,
    ),
    (
        "article.yaml",
        r#"kind: FeatureGroup
name: article_stats
entity: article
type: attribute
description: Engagement of each article
features:
  - { name: clicks_1h, type: int64 }
  - { name: ctr_7d, type: float64 }
serving: { tiers: [local], soft_ttl: 30s, hard_ttl: 10m, jitter: 10%, negative_ttl: 1m, write: through }
"#,
    ),
    (
        "context.yaml",
        r#"# Computed for each request from what is stored, never stored itself.
kind: FeatureGroup
name: feed_context
type: on_demand
description: How a user relates to an article, at request time
features:
  - name: seconds_since_last_click
    type: int64
    expr: to_unixtime(now()) - to_unixtime(array_element(recent_clicked_articles.event_time, 1))
  - name: clicked_before
    type: bool
    expr: array_has(recent_clicked_articles.article_id, article_id)
  - name: recent_clicks
    type: int64
    expr: cardinality(recent_clicked_articles.article_id)
  - name: keyword_count
    type: int64
    expr: cardinality(user_profile.keywords)
  - name: age_weighted_ctr
    type: float64
    expr: article_stats.ctr_7d * CASE WHEN user_profile.age < 30 THEN 1.2 ELSE 1.0 END
"#,
    ),
    (
        "services.yaml",
        r#"# What the home feed ranking model reads.
kind: FeatureService
name: home_feed_ranker
features:
  - user_profile:*
  - recent_clicked_articles:article_id
  - article_stats:ctr_7d
---
# The same, with the request-time features of feed_context.
kind: FeatureService
name: home_feed_ranker_live
features:
  - user_profile:*
  - recent_clicked_articles:article_id
  - article_stats:ctr_7d
  - feed_context:*
"#,
    ),
];

/// Writes the example repo into `dir` (files that exist are left alone).
pub fn write_example_repo(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for (name, text) in EXAMPLE_REPO {
        let path = dir.join(name);
        if !path.exists() {
            std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        }
    }
    Ok(())
}

const COUNTRIES: [&str; 8] = ["KR", "JP", "US", "GB", "DE", "FR", "CA", "BR"];
const KEYWORDS: [&str; 12] = [
    "bike", "camera", "desk", "guitar", "lamp", "laptop", "phone", "plant", "shoes", "sofa",
    "tent", "watch",
];

/// How many records the sample data holds, for progress output.
pub struct Loaded {
    pub records: usize,
    pub seconds: f64,
}

/// Loads deterministic sample data: the same values on every run, with event times relative
/// to `anchor` (milliseconds since the epoch), so reloading with the same anchor changes
/// nothing online. Written like any other write: into the cache tiers and the offline
/// history too.
pub async fn load_sample_data(
    writer: &WritePath,
    repo: &FeatureRepo,
    anchor: i64,
) -> anyhow::Result<Loaded> {
    let group = |name: &str| {
        repo.group(name)
            .with_context(|| format!("the example repo has no group {name}"))
    };
    let profile = group("user_profile")?;
    let clicks = group("recent_clicked_articles")?;
    let stats = group("article_stats")?;
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    let mut records = 0;
    const BATCH: usize = 2000;

    let mut batch = Vec::with_capacity(BATCH);
    for u in 0..USERS {
        let n_keywords = rng.random_range(1..=4);
        let keywords = (0..n_keywords)
            .map(|_| Value::String(KEYWORDS[rng.random_range(0..KEYWORDS.len())].to_owned()))
            .collect();
        batch.push(Write {
            entity: EntityKey(format!("u{u}")),
            record: Record::new(
                anchor - rng.random_range(0..86_400_000),
                vec![
                    Value::String(COUNTRIES[rng.random_range(0..COUNTRIES.len())].to_owned()),
                    Value::Int64(rng.random_range(18..70)),
                    Value::List(keywords),
                ],
            ),
        });
        if batch.len() == BATCH {
            records += batch.len();
            writer.write(profile, &batch).await?;
            batch.clear();
        }
    }
    records += batch.len();
    writer.write(profile, &batch).await?;
    batch.clear();

    // Most users clicked 50 to 80 articles over the last two weeks; every tenth user only a
    // few, so windows and top_n show both cases.
    for u in 0..USERS {
        let n = if u % 10 == 0 {
            rng.random_range(0..20)
        } else {
            rng.random_range(50..=80)
        };
        let mut t = anchor;
        let mut session = rng.random_range(0..1_000_000u32);
        for _ in 0..n {
            t -= rng.random_range(60_000..14_400_000);
            if rng.random_range(0..8) == 0 {
                session = rng.random_range(0..1_000_000u32);
            }
            batch.push(Write {
                entity: EntityKey(format!("u{u}")),
                record: Record::new(
                    t,
                    vec![
                        Value::String(format!("a{}", rng.random_range(0..ARTICLES))),
                        Value::String(format!("s{session}")),
                    ],
                ),
            });
        }
        if batch.len() >= BATCH {
            records += batch.len();
            writer.write(clicks, &batch).await?;
            batch.clear();
        }
    }
    records += batch.len();
    writer.write(clicks, &batch).await?;
    batch.clear();

    for a in 0..ARTICLES {
        let clicks_1h = rng.random_range(0..500i64);
        let ctr = (rng.random_range(0..10_000) as f64) / 100_000.0;
        batch.push(Write {
            entity: EntityKey(format!("a{a}")),
            record: Record::new(
                anchor - rng.random_range(0..3_600_000),
                vec![Value::Int64(clicks_1h), Value::Float64(ctr)],
            ),
        });
        if batch.len() == BATCH {
            records += batch.len();
            writer.write(stats, &batch).await?;
            batch.clear();
        }
    }
    records += batch.len();
    writer.write(stats, &batch).await?;

    Ok(Loaded {
        records,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// The example requests printed once the quickstart serves.
pub fn example_requests(http: &str) -> String {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    format!(
        r#"
Cellar is serving the example feature repo on http://{http}

Try:

  curl -s http://{http}/v1/features -d '{{"entities": {{"user_id": ["u1", "u2"]}}, "groups": ["user_profile"]}}'

  curl -s http://{http}/v1/features -d '{{"entities": {{"user_id": ["u7"]}}, "groups": [{{"name": "recent_clicked_articles", "top_n": 5, "window": "1d"}}]}}'

  curl -s http://{http}/get-online-features -d '{{"feature_service": "home_feed_ranker", "entities": {{"user_id": ["u1", "u1"], "article_id": ["a1", "a2"]}}}}'

  curl -s http://{http}/v1/features -d '{{"entities": {{"user_id": ["u1", "u1"], "article_id": ["a7541", "a2"]}}, "groups": ["feed_context"]}}'

  curl -s http://{http}/v1/push -d '{{"group": "user_profile", "records": [{{"entity": {{"user_id": "u1"}}, "features": {{"country": "NZ", "age": 33, "keywords": ["kayak"]}}}}]}}'

  curl -s http://{http}/v1/events -d '{{"topic": "user-actions", "events": [{{"type": "article_clicked", "user_id": "u1", "ts": "{now}", "article_id": "a42", "session_id": "s9"}}]}}'

  curl -s http://{http}/metrics | grep cellar_

Press Ctrl-C to stop.
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_repo_is_valid() {
        let files: Vec<(String, String)> = EXAMPLE_REPO
            .iter()
            .map(|(n, t)| (n.to_string(), t.to_string()))
            .collect();
        let repo = cellar_spec::parse_repo_with(&files, &cellar_expr::Checker)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(repo.groups.len(), 3);
        assert_eq!(repo.on_demand.len(), 1);
        assert!(repo.service("home_feed_ranker").is_some());
    }
}
