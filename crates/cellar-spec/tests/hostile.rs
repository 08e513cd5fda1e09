//! Hostile input: whatever the text, parsing answers with a repo or with errors, never a panic
//! or a crash.

use cellar_spec::parse_repo;

fn parse(text: String) -> Result<cellar_spec::FeatureRepo, cellar_spec::SpecErrors> {
    parse_repo(&[("hostile.yaml".to_owned(), text)])
}

fn errors(text: String) -> Vec<String> {
    match parse(text) {
        Ok(repo) => panic!("hostile input accepted: {repo:?}"),
        Err(e) => e.0.iter().map(ToString::to_string).collect(),
    }
}

#[test]
fn deep_flow_nesting_is_refused_without_overflowing_the_stack() {
    let e = errors(format!(
        "kind: {}{}",
        "[".repeat(100_000),
        "]".repeat(100_000)
    ));
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("too deeply nested"), "{e:?}");
    // Spread over lines, the parser's own limit of 255 flow levels answers.
    let text: String = (0..100_000).map(|_| " [\n").collect();
    let e = errors(format!("kind:\n{text}"));
    assert_eq!(e.len(), 1);
    assert!(e[0].contains("YAML syntax"), "{e:?}");
}

#[test]
fn nesting_under_the_bound_parses() {
    // Deep, but within what the parser thread's stack holds.
    let depth = 250;
    let e = errors(format!("kind: {}{}", "[".repeat(depth), "]".repeat(depth)));
    assert_eq!(e, ["hostile.yaml:1: kind: expected text, found a list"]);
}

#[test]
fn deep_block_nesting_is_refused() {
    // Compact block sequences nest once per `- ` on a single line.
    let e = errors(format!("{}x\n", "- ".repeat(30_000)));
    assert!(e[0].contains("too deeply nested"), "{e:?}");
}

#[test]
fn block_nesting_under_the_bound_parses() {
    let e = errors(format!("kind:\n  {}x\n", "- ".repeat(9_990)));
    assert_eq!(e, ["hostile.yaml:2: kind: expected text, found a list"]);
}

#[test]
fn tabs_are_a_syntax_error_with_a_line() {
    let e = errors("kind: Entity\nname: user\nkeys:\n\t- { name: id, type: string }\n".into());
    assert_eq!(e.len(), 1);
    assert!(e[0].starts_with("hostile.yaml:4: YAML syntax"), "{e:?}");
}

#[test]
fn binary_garbage_is_an_error() {
    let garbage: Vec<u8> = (0..4096u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let text = String::from_utf8_lossy(&garbage).into_owned();
    assert!(parse(text).is_err());
    assert!(parse("\u{0}\u{1}\u{7f}kind: \u{0}".into()).is_err());
}

#[test]
fn empty_and_comment_only_files_are_empty_repos() {
    for text in [
        "",
        "\n\n",
        "---\n",
        "---\n---\n# nothing\n...\n",
        "# only a comment\n",
    ] {
        assert_eq!(
            parse(text.into()).unwrap(),
            cellar_spec::FeatureRepo::default(),
            "{text:?}"
        );
    }
}

#[test]
fn documents_that_are_not_mappings_are_errors() {
    assert_eq!(
        errors("- kind: Entity\n- name: user\n".into()),
        ["hostile.yaml:1: a spec document must be a mapping with a `kind`"]
    );
    assert_eq!(
        errors("---\njust text\n".into()),
        ["hostile.yaml:2: a spec document must be a mapping with a `kind`"]
    );
    assert_eq!(
        errors("kind:\n  nested: mapping\n".into()),
        ["hostile.yaml:2: kind: expected text, found a mapping"]
    );
}

#[test]
fn aliases_anchors_and_tags_are_errors() {
    for text in [
        "kind: *x\n",
        "kind: &x Entity\nname: *x\n",
        "kind: !Entity x\n",
        "? [a, b]\n: c\n",
        "kind: Entity\nname: user\nkeys: [{ name: id, type: string }]\n<<: { a: b }\n",
    ] {
        assert!(parse(text.into()).is_err(), "{text:?}");
    }
}

#[test]
fn odd_scalars_in_every_field_are_errors() {
    let text = "kind: FeatureGroup\nname: [1]\nentity: {}\ntype: 7\nfeatures: x\n\
                retention: []\nserving: ''\nmax_record_bytes: -1\nfreshness: [1h]\n"
        .to_owned();
    assert!(errors(text).len() >= 7);
}
