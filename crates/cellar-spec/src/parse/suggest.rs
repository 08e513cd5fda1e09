//! "Did you mean" suggestions for misspelt names.

/// Edit distance between two words, counting each insertion, deletion or substitution.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// The candidate nearest to a misspelt word, if it is near enough to be what was meant.
pub(super) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let lower = word.to_lowercase();
    let limit = (word.chars().count() / 3).clamp(1, 3);
    candidates
        .into_iter()
        .map(|c| (edit_distance(&lower, &c.to_lowercase()), c))
        .filter(|(d, _)| *d <= limit)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suggestions_need_a_near_miss() {
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(suggest("featurs", ["features", "entity"]), Some("features"));
        assert_eq!(
            suggest("soft_tl", ["soft_ttl", "hard_ttl"]),
            Some("soft_ttl")
        );
        assert_eq!(suggest("zzz", ["features", "entity"]), None);
    }
}
