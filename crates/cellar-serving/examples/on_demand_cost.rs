//! What computing an on-demand group costs the serving path per request, apart from the network
//! and the reads: the quickstart's `feed_context` (five expressions over three stored groups and
//! the request's keys) for 1 and 100 rows of one user, as a ranker asks, split into building
//! the inputs and the whole evaluation. One row is walked over cells borrowed from the
//! records; a hundred are evaluated by DataFusion over Arrow columns.
//! `cargo run --release -p cellar-serving --example on_demand_cost`
use std::time::Instant;

use cellar_expr::arrow::column;
use cellar_expr::cells::CellColumn;
use cellar_serving::on_demand::ServedOnDemand;
use cellar_serving::on_demand::{
    event_time_cells, event_time_column, stored_cells, stored_column, InputColumn, InputSource,
};
use cellar_serving::service::{Row, Status};
use cellar_serving::sources::SourceMetrics;
use cellar_spec::{ScalarType, Value, ValueType};
use cellar_store::Record;

const REPO: &str = r#"
kind: Entity
name: user
keys: [{ name: user_id, type: string }]
---
kind: Entity
name: article
keys: [{ name: article_id, type: string }]
---
kind: FeatureGroup
name: user_profile
entity: user
type: attribute
features:
  - { name: country, type: string }
  - { name: age, type: int64 }
  - { name: keywords, type: list<string> }
---
kind: FeatureGroup
name: recent_clicked_articles
entity: user
type: timeseries
features:
  - { name: article_id, type: string }
  - { name: session_id, type: string }
---
kind: FeatureGroup
name: article_stats
entity: article
type: attribute
features:
  - { name: clicks_1h, type: int64 }
  - { name: ctr_7d, type: float64 }
---
kind: FeatureGroup
name: feed_context
type: on_demand
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
"#;

fn main() {
    let files = vec![("repo.yaml".to_owned(), REPO.to_owned())];
    let repo = cellar_spec::parse::parse_repo_with(&files, &cellar_expr::Checker).unwrap();
    let spec = repo
        .on_demand
        .iter()
        .find(|g| g.name == "feed_context")
        .unwrap();
    let group = ServedOnDemand::new(spec, &repo, &SourceMetrics::default());
    let now = 1_800_000_000_000;
    let profile = Row::Record {
        status: Status::Present,
        record: Some(Record::new(
            now - 5_000,
            vec![
                Value::String("de".into()),
                Value::Int64(27),
                Value::List((0..5).map(|k| Value::String(format!("kw{k}"))).collect()),
            ],
        )),
    };
    let clicks = Row::Series {
        records: (0..50)
            .map(|i| {
                Record::new(
                    now - 60_000 * (i + 1),
                    vec![
                        Value::String(format!("a{}", 1000 + i)),
                        Value::String("s1".into()),
                    ],
                )
            })
            .collect(),
    };
    for rows in [1, 100] {
        let user = vec![profile.clone(); rows];
        let series = vec![clicks.clone(); rows];
        let stats: Vec<Row> = (0..rows)
            .map(|i| Row::Record {
                status: Status::Present,
                record: Some(Record::new(
                    now,
                    vec![Value::Int64(3), Value::Float64(0.01 * i as f64)],
                )),
            })
            .collect();
        let articles: Vec<Value> = (0..rows)
            .map(|i| Value::String(format!("a{}", 1000 + 2 * i)))
            .collect();
        // As the server gives them: cells when the request is walked, Arrow columns otherwise.
        let input = |source: &InputSource, t: ValueType, cells: bool| {
            let (rows, series) = match source {
                InputSource::Key(_) if cells => {
                    return InputColumn::Cells(CellColumn::of_values(t, articles.iter()))
                }
                InputSource::Key(_) => return InputColumn::Array(column(t, &articles)),
                InputSource::Stored { group, .. } => match group.as_str() {
                    "user_profile" => (&user, false),
                    "recent_clicked_articles" => (&series, true),
                    _ => (&stats, false),
                },
                InputSource::EventTime { .. } => (&series, true),
                other => panic!("the example has no {other:?}"),
            };
            match (source, cells) {
                (InputSource::Stored { position, .. }, true) => {
                    InputColumn::Cells(stored_cells(rows, *position, t, series))
                }
                (InputSource::Stored { position, .. }, false) => {
                    InputColumn::Array(stored_column(rows, *position, t, series))
                }
                (_, true) => InputColumn::Cells(event_time_cells(rows, series)),
                (_, false) => InputColumn::Array(event_time_column(rows, series)),
            }
        };
        let selected: Vec<usize> = (0..spec.features.len()).collect();
        let check = group.evaluate(&selected, rows, now, input);
        let Row::Computed { values } = &check[0] else {
            panic!("not computed");
        };
        assert!(values.iter().all(Result::is_ok), "{values:?}");
        assert_eq!(values[2], Ok(Value::Int64(50)));

        let n = if rows == 1 { 200_000 } else { 5_000 };
        let started = Instant::now();
        for _ in 0..n {
            std::hint::black_box(group.evaluate(&selected, rows, now, input));
        }
        let whole = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        let types = [
            ValueType::Scalar(ScalarType::String),
            ValueType::List(ScalarType::String),
            ValueType::List(ScalarType::String),
            ValueType::Scalar(ScalarType::Int64),
            ValueType::Scalar(ScalarType::Float64),
        ];
        let sources = [
            InputSource::Key("article_id".into()),
            InputSource::Stored {
                group: "recent_clicked_articles".into(),
                position: 0,
            },
            InputSource::Stored {
                group: "user_profile".into(),
                position: 2,
            },
            InputSource::Stored {
                group: "user_profile".into(),
                position: 1,
            },
            InputSource::Stored {
                group: "article_stats".into(),
                position: 1,
            },
        ];
        let started = Instant::now();
        for _ in 0..n {
            for (source, t) in sources.iter().zip(types) {
                std::hint::black_box(input(source, t, rows == 1));
            }
            std::hint::black_box(input(
                &InputSource::EventTime {
                    group: "recent_clicked_articles".into(),
                },
                ValueType::List(ScalarType::Timestamp),
                rows == 1,
            ));
        }
        let inputs = started.elapsed().as_secs_f64() * 1e6 / n as f64;
        println!("{rows} row(s): {whole:.2} us per evaluation, of which {inputs:.2} us building the six input columns");
    }
}
