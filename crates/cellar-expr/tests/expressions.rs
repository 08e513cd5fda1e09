//! The expression language: what compiles, what is refused and why, and what evaluation gives
//! over many rows at once, on the serving path (compiled once, evaluated over a batch built
//! from feature values) and on the batch path (the same text as DataFusion SQL over Arrow).

use std::sync::Arc;

use arrow_array::RecordBatch;
use cellar_expr::{session, Expression, Input, Outcome, Scope};
use cellar_spec::{Value, ValueType};
use datafusion::datasource::MemTable;
use rand::{Rng, SeedableRng};

fn t(s: &str) -> ValueType {
    s.parse().unwrap()
}

/// Request fields, a key, and features of two stored groups, as an on-demand group sees them.
fn scope() -> Scope {
    Scope::new(vec![
        Input::new("user_id", t("string")),
        Input::new("user_lat", t("float64")),
        Input::new("user_lon", t("float64")),
        Input::new("article_id", t("int64")),
        Input::qualified("user_clicks", "last_click_at", t("timestamp")),
        Input::qualified("user_clicks", "recent_articles", t("list<int64>")),
        Input::qualified("user_clicks", "clicks", t("int64")),
        Input::qualified("user_clicks", "views", t("int64")),
        Input::qualified("user_profile", "keywords", t("set<string>")),
        Input::qualified("user_profile", "embedding", t("vector<float32, 3>")),
        Input::qualified("article", "category", t("string")),
        Input::qualified("article", "lat", t("float64")),
        Input::qualified("article", "lon", t("float64")),
        Input::qualified("article", "embedding", t("vector<float32, 3>")),
        Input::qualified("article", "score", t("float64")),
    ])
    .unwrap()
}

const NOW_MS: i64 = 1_796_500_800_000;

fn row(i: i64) -> Vec<Value> {
    vec![
        Value::String(format!("u{i}")),
        Value::Float64(52.52),
        Value::Float64(13.405),
        Value::Int64(100 + i),
        Value::Timestamp(NOW_MS - 90_000 * i),
        Value::List(vec![
            Value::Int64(100),
            Value::Int64(101),
            Value::Int64(105),
        ]),
        Value::Int64(i),
        Value::Int64(10 - i),
        Value::Set(vec![
            Value::String("food".into()),
            Value::String("travel".into()),
        ]),
        Value::Vector(vec![1.0, 0.0, 0.0]),
        Value::String(if i % 2 == 0 { "food" } else { "sports" }.into()),
        Value::Float64(48.8566),
        Value::Float64(2.3522),
        Value::Vector(vec![1.0, 1.0, 0.0]),
        Value::Float64(0.25 * i as f64),
    ]
}

fn eval(text: &str, output: &str, rows: &[Vec<Value>]) -> Vec<Outcome> {
    let scope = scope();
    let expression =
        Expression::compile(text, &scope, t(output)).unwrap_or_else(|e| panic!("`{text}`: {e}"));
    let batch = scope.batch_of_rows(rows, NOW_MS).unwrap();
    expression.evaluate_rows(&batch)
}

fn refused(text: &str, output: &str) -> String {
    match Expression::compile(text, &scope(), t(output)) {
        Ok(_) => panic!("`{text}` compiled"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_functions_a_ranking_model_needs_evaluate_over_every_row() {
    let rows: Vec<Vec<Value>> = (0..4).map(row).collect();
    let seconds = eval(
        "to_unixtime(now()) - to_unixtime(last_click_at)",
        "int64",
        &rows,
    );
    assert_eq!(
        seconds,
        (0..4).map(|i| Ok(Value::Int64(90 * i))).collect::<Vec<_>>()
    );
    let in_recent = eval("array_has(recent_articles, article_id)", "bool", &rows);
    assert_eq!(
        in_recent,
        [true, true, false, false]
            .map(|b| Ok(Value::Bool(b)))
            .to_vec()
    );
    let keyword = eval("array_has(keywords, category)", "bool", &rows);
    assert_eq!(
        keyword,
        [true, false, true, false]
            .map(|b| Ok(Value::Bool(b)))
            .to_vec()
    );
    let ctr = eval(
        "CASE WHEN views > 0 THEN clicks / CAST(views AS DOUBLE) ELSE 0.0 END",
        "float64",
        &rows,
    );
    assert_eq!(ctr[0], Ok(Value::Float64(0.0)));
    assert_eq!(ctr[2], Ok(Value::Float64(2.0 / 8.0)));
    let Ok(Value::Float64(km)) = &eval(
        "haversine_km(user_lat, user_lon, article.lat, article.lon)",
        "float64",
        &rows[..1],
    )[0] else {
        panic!("no distance")
    };
    assert!((km - 877.46).abs() < 0.5, "Berlin to Paris: {km} km");
    let cosine = eval(
        "cosine_similarity(user_profile.embedding, article.embedding)",
        "float64",
        &rows[..1],
    );
    let Ok(Value::Float64(c)) = cosine[0] else {
        panic!("{cosine:?}")
    };
    assert!((c - std::f64::consts::FRAC_1_SQRT_2).abs() < 1e-9, "{c}");
    let dot = eval(
        "dot_product(user_profile.embedding, article.embedding)",
        "float64",
        &rows[..1],
    );
    assert_eq!(dot, vec![Ok(Value::Float64(1.0))]);
    let text = eval("upper(user_id) || '/' || category", "string", &rows[..2]);
    assert_eq!(
        text,
        vec![
            Ok(Value::String("U0/food".into())),
            Ok(Value::String("U1/sports".into()))
        ]
    );
    let count = eval("cardinality(recent_articles)", "int64", &rows[..1]);
    assert_eq!(count, vec![Ok(Value::Int64(3))]);
}

#[test]
fn a_row_that_fails_fails_alone_and_a_missing_input_is_null() {
    let mut rows: Vec<Vec<Value>> = (0..6).map(row).collect();
    // Row 3 divides by zero; row 4 has no `clicks`.
    rows[3][7] = Value::Int64(0);
    rows[4][6] = Value::Null;
    let ratio = eval("clicks / views", "int64", &rows);
    assert_eq!(ratio[0], Ok(Value::Int64(0)));
    assert_eq!(ratio[2], Ok(Value::Int64(0)));
    match &ratio[3] {
        Err(e) => assert!(e.contains("Divide by zero"), "{e}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(ratio[4], Ok(Value::Null), "a missing input gives null");
    assert_eq!(ratio[5], Ok(Value::Int64(1)));
}

#[test]
fn now_is_the_evaluation_time_not_the_compile_time() {
    let scope = scope();
    let expression = Expression::compile("to_unixtime(now())", &scope, t("int64")).unwrap();
    for now in [NOW_MS, NOW_MS + 3_600_000] {
        let batch = scope.batch_of_rows(&[row(0)], now).unwrap();
        assert_eq!(
            expression.evaluate_rows(&batch),
            vec![Ok(Value::Int64(now / 1000))]
        );
    }
}

#[test]
fn wrong_expressions_are_refused_saying_what_is_wrong() {
    let cases = [
        ("clicks + unknown_feature", "int64", "unknown_feature"),
        ("user_clicks.nope", "int64", "nope"),
        (
            "clicks / 2.0",
            "int64",
            "gives a float, which does not fit the feature's type int64",
        ),
        ("category", "float64", "gives a string"),
        (
            "sum(clicks)",
            "int64",
            "the aggregate `sum` cannot be used here",
        ),
        ("clicks +", "int64", ""),
        (
            "cosine_similarity(category, article.embedding)",
            "float64",
            "lists of numbers",
        ),
        (
            "haversine_km(user_lat, user_lon)",
            "float64",
            "haversine_km",
        ),
        ("now() - last_click_at", "int64", "duration"),
    ];
    for (text, output, says) in cases {
        let e = refused(text, output);
        assert!(e.contains(says), "`{text}`: {e}");
        assert!(!e.contains('\n'), "`{text}`: one line: {e}");
    }
    // An integer result fits a float feature; a typed null fits anything.
    Expression::compile("clicks * 2", &scope(), t("float64")).unwrap();
    Expression::compile("NULL", &scope(), t("list<string>")).unwrap();
    // Map features are named when an expression reads one.
    let scope = Scope::new(vec![
        Input::new("clicks", t("int64")),
        Input::qualified("article", "prices", t("map<string, float64>")),
    ])
    .unwrap();
    let err = Expression::compile("article.prices", &scope, t("float64")).unwrap_err();
    assert!(
        err.to_string()
            .contains("`article.prices` is a map<string, float64>"),
        "{err}"
    );
    Expression::compile("clicks", &scope, t("int64")).unwrap();
}

/// The batch path: the same text as a DataFusion SQL projection over an Arrow table, in the
/// language's session.
async fn batch_path(text: &str, output: ValueType, batch: &RecordBatch) -> Vec<Outcome> {
    let context = session();
    let table = MemTable::try_new(batch.schema(), vec![vec![batch.clone()]]).unwrap();
    context.register_table("input", Arc::new(table)).unwrap();
    // The batch path gives `now()` the same column (a row's time) that serving rewrites it to.
    let sql = text.replace("now()", "\"@now\"");
    let frame = context
        .sql(&format!("SELECT {sql} AS v FROM input"))
        .await
        .unwrap_or_else(|e| panic!("`{sql}`: {e}"));
    let batches = frame.collect().await.unwrap();
    let mut out = Vec::new();
    for b in batches {
        let array = arrow_array::ArrayRef::clone(b.column(0));
        let array = datafusion::arrow::compute::cast(
            &array,
            &cellar_expr::arrow::data_type(output).unwrap(),
        )
        .unwrap();
        let cells = cellar_expr::column::Column::new(&array);
        for row in 0..array.len() {
            out.push(cells.cell(row).to_value(output).map_err(|e| e.to_string()));
        }
    }
    out
}

#[tokio::test]
async fn the_serving_path_and_the_batch_path_give_the_same_values() {
    // Unqualified names only, so the batch path's table has the same columns.
    let scope = Scope::new(vec![
        Input::new("clicks", t("int64")),
        Input::new("views", t("int64")),
        Input::new("score", t("float64")),
        Input::new("category", t("string")),
        Input::new("last_click_at", t("timestamp")),
        Input::new("recent", t("list<int64>")),
        Input::new("article_id", t("int64")),
        Input::new("lat", t("float64")),
        Input::new("lon", t("float64")),
        Input::new("embedding", t("vector<float32, 4>")),
    ])
    .unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let rows: Vec<Vec<Value>> = (0..3000)
        .map(|_| {
            let recent = (0..rng.random_range(0..6))
                .map(|_| Value::Int64(rng.random_range(0..20)))
                .collect();
            let embedding = (0..4).map(|_| rng.random_range(-1.0..1.0)).collect();
            let mut row = vec![
                Value::Int64(rng.random_range(0..50)),
                Value::Int64(rng.random_range(1..500)),
                Value::Float64(rng.random_range(-10.0..10.0)),
                Value::String(["food", "sports", "news", ""][rng.random_range(0..4)].into()),
                Value::Timestamp(NOW_MS - rng.random_range(0..86_400_000)),
                Value::List(recent),
                Value::Int64(rng.random_range(0..20)),
                Value::Float64(rng.random_range(-80.0..80.0)),
                Value::Float64(rng.random_range(-180.0..180.0)),
                Value::Vector(embedding),
            ];
            // Every input is missing now and then.
            for value in &mut row {
                if rng.random_ratio(1, 20) {
                    *value = Value::Null;
                }
            }
            row
        })
        .collect();
    let batch = scope.batch_of_rows(&rows, NOW_MS).unwrap();
    let expressions = [
        ("clicks / CAST(views AS DOUBLE) * score", "float64"),
        (
            "CASE WHEN clicks > 10 THEN 'heavy' WHEN clicks > 0 THEN 'light' ELSE category END",
            "string",
        ),
        ("to_unixtime(now()) - to_unixtime(last_click_at)", "int64"),
        ("array_has(recent, article_id)", "bool"),
        ("cardinality(recent) + clicks", "int64"),
        ("haversine_km(lat, lon, 52.52, 13.405)", "float64"),
        (
            "cosine_similarity(embedding, make_array(0.5, -0.5, 0.25, 1.0))",
            "float64",
        ),
        ("dot_product(embedding, embedding)", "float64"),
        (
            "upper(category) || ':' || CAST(clicks AS VARCHAR)",
            "string",
        ),
        ("round(sqrt(abs(score)) * 100) / 100", "float64"),
        ("coalesce(clicks, 0) % 7 = 3 AND category LIKE 'f%'", "bool"),
    ];
    for (text, output) in expressions {
        let compiled = Expression::compile(text, &scope, t(output))
            .unwrap_or_else(|e| panic!("`{text}`: {e}"));
        let serving = compiled.evaluate_rows(&batch);
        let batch_values = batch_path(text, t(output), &batch).await;
        assert_eq!(serving.len(), 3000);
        assert_eq!(serving.len(), batch_values.len(), "`{text}`");
        if let Some(row) = (0..serving.len()).find(|&i| serving[i] != batch_values[i]) {
            panic!(
                "`{text}` row {row} ({:?}): serving {:?}, batch {:?}",
                rows[row], serving[row], batch_values[row]
            );
        }
        assert!(
            serving
                .iter()
                .filter(|v| matches!(v, Ok(v) if *v != Value::Null))
                .count()
                > 2000,
            "`{text}` gave mostly nulls or errors"
        );
    }
}

#[test]
fn a_bare_name_reads_the_unqualified_input_when_a_group_has_a_feature_of_that_name() {
    let scope = Scope::new(vec![
        Input::qualified("recent", "article_id", t("list<string>")),
        Input::new("article_id", t("string")),
        Input::qualified("profile", "article_id", t("string")),
    ])
    .unwrap();
    let rows = vec![
        vec![
            Value::List(vec![Value::String("a1".into()), Value::String("a2".into())]),
            Value::String("a2".into()),
            Value::String("a9".into()),
        ],
        vec![
            Value::List(vec![Value::String("a1".into())]),
            Value::String("a3".into()),
            Value::String("a1".into()),
        ],
    ];
    let batch = scope.batch_of_rows(&rows, NOW_MS).unwrap();
    let has = Expression::compile(
        "array_has(recent.article_id, article_id)",
        &scope,
        t("bool"),
    )
    .unwrap();
    assert_eq!(
        has.evaluate_rows(&batch),
        vec![Ok(Value::Bool(true)), Ok(Value::Bool(false))]
    );
    assert_eq!(has.inputs_read(&scope), vec![0, 1]);
    let other = Expression::compile("profile.article_id", &scope, t("string")).unwrap();
    assert_eq!(
        other.evaluate_rows(&batch),
        vec![
            Ok(Value::String("a9".into())),
            Ok(Value::String("a1".into()))
        ]
    );
    assert_eq!(other.inputs_read(&scope), vec![2]);
}
