//! What evaluating the quickstart's `feed_context` expressions costs, over batches of 1 and 100
//! rows: each expression's evaluation by DataFusion (and with per-row outcomes), the same walked
//! a row at a time, and building the batch from values. `cargo run --release -p cellar-expr --example expression_cost`
use cellar_expr::{Expression, Input, RowBatch, Scope};
use cellar_spec::{ScalarType, Value, ValueType};
use std::time::Instant;

fn main() {
    let ts = ValueType::List(ScalarType::Timestamp);
    let inputs = vec![
        Input::new("article_id", ValueType::Scalar(ScalarType::String)),
        Input::qualified("recent_clicked_articles", "event_time", ts),
        Input::qualified(
            "recent_clicked_articles",
            "article_id",
            ValueType::List(ScalarType::String),
        ),
        Input::qualified(
            "user_profile",
            "keywords",
            ValueType::List(ScalarType::String),
        ),
        Input::qualified(
            "article_stats",
            "ctr_7d",
            ValueType::Scalar(ScalarType::Float64),
        ),
        Input::qualified("user_profile", "age", ValueType::Scalar(ScalarType::Int64)),
    ];
    let scope = Scope::new(inputs).unwrap();
    let exprs = [
        ("to_unixtime(now()) - to_unixtime(array_element(recent_clicked_articles.event_time, 1))", ValueType::Scalar(ScalarType::Int64)),
        ("array_has(recent_clicked_articles.article_id, article_id)", ValueType::Scalar(ScalarType::Bool)),
        ("cardinality(recent_clicked_articles.article_id)", ValueType::Scalar(ScalarType::Int64)),
        ("cardinality(user_profile.keywords)", ValueType::Scalar(ScalarType::Int64)),
        ("article_stats.ctr_7d * CASE WHEN user_profile.age < 30 THEN 1.2 ELSE 1.0 END", ValueType::Scalar(ScalarType::Float64)),
    ];
    let compiled: Vec<Expression> = exprs
        .iter()
        .map(|(t, o)| Expression::compile(t, &scope, *o).unwrap())
        .collect();
    let row = vec![
        Value::String("a1".into()),
        Value::List(vec![
            Value::Timestamp(1_700_000_000_000),
            Value::Timestamp(1_699_000_000_000),
        ]),
        Value::List(vec![Value::String("a1".into()), Value::String("a2".into())]),
        Value::List(vec![Value::String("k1".into()), Value::String("k2".into())]),
        Value::Float64(0.12),
        Value::Int64(25),
    ];
    for rows in [1usize, 100] {
        let many: Vec<Vec<Value>> = vec![row.clone(); rows];
        let n = 20_000 / rows.max(1) * 10;
        let t = Instant::now();
        for _ in 0..n {
            let _ = scope.batch_of_rows(&many, 1_700_000_100_000).unwrap();
        }
        let batch_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
        let batch = scope.batch_of_rows(&many, 1_700_000_100_000).unwrap();
        for (e, (text, _)) in compiled.iter().zip(&exprs) {
            let t = Instant::now();
            for _ in 0..n {
                let _ = e.evaluate(&batch).unwrap();
            }
            let eval_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            let t = Instant::now();
            for _ in 0..n {
                let _ = e.evaluate_rows(&batch);
            }
            let rows_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            let walked = RowBatch::new(batch.clone());
            let t = Instant::now();
            for _ in 0..n {
                let _ = e.evaluate_walked(&walked);
            }
            let walked_us = t.elapsed().as_secs_f64() * 1e6 / n as f64;
            println!(
                "{rows} rows: evaluate {eval_us:.2} us, evaluate_rows {rows_us:.2} us, a row at a time {walked_us:.2} us ({})  {text}",
                if e.has_row_plan() { "row plan" } else { "no row plan: DataFusion" }
            );
        }
        println!("{rows} rows: building the batch {batch_us:.2} us");
    }
}
