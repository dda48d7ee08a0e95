//! The 1000 ImageNet-1k class names, for choosing what a class-conditional model draws.
//!
//! Class ids follow the standard ImageNet-1k order (sorted WordNet ids: 0 = tench,
//! 1 = goldfish, …, 999 = toilet tissue), which is the label order the DC-AE diffusion models were
//! trained with. Each class has one or more names (WordNet lemmas, e.g. "Arctic fox", "white
//! fox", "Alopex lagopus"); the first is its display name. Id 1000 is the extra "null" class that
//! classifier-free guidance uses for unconditional generation.
//!
//! Names are not unique: "crane" is both a bird (134) and a machine (517), "maillot" is 638 and
//! 639, "cardigan" is a dog (264) and a sweater (474) when case is ignored. [`lookup`] therefore
//! reports ambiguity instead of guessing.

use std::sync::OnceLock;

/// Number of real ImageNet-1k classes (ids `0..NUM_CLASSES`).
pub const NUM_CLASSES: usize = 1000;

/// The id of the unconditional ("null") class used by classifier-free guidance.
pub const UNCONDITIONAL: u32 = NUM_CLASSES as u32;

/// One line per class, comma-separated names; see assets/LICENSES.md for the source.
const CLASSES_TXT: &str = include_str!("../assets/imagenet_classes.txt");

/// Words accepted by [`lookup`] for the unconditional class.
const UNCONDITIONAL_WORDS: [&str; 2] = ["unconditional", "null"];

/// How many close matches an error message lists.
const MAX_SUGGESTIONS: usize = 8;

/// Why a class query could not be resolved to one id. The messages are meant for users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LabelError {
    #[error("no class given: type an ImageNet class name or an id from 0 to 999 (1000 or \"unconditional\" for none)")]
    Empty,

    #[error("class id {id} is out of range: ImageNet classes are 0 to 999, and 1000 means unconditional")]
    OutOfRange { id: u64 },

    #[error("\"{query}\" names several ImageNet classes: {}; give the id instead", list(.candidates))]
    Ambiguous {
        query: String,
        candidates: Vec<(u32, &'static str)>,
    },

    #[error("no ImageNet class is called \"{query}\"{}", suggest(.suggestions))]
    NotFound {
        query: String,
        suggestions: Vec<(u32, &'static str)>,
    },
}

fn list(entries: &[(u32, &'static str)]) -> String {
    entries
        .iter()
        .map(|(id, name)| format!("{id} ({name})"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn suggest(entries: &[(u32, &'static str)]) -> String {
    if entries.is_empty() {
        "; try another name or an id from 0 to 999".to_owned()
    } else {
        format!("; did you mean: {}?", list(entries))
    }
}

struct Class {
    names: Vec<&'static str>,
    /// `names`, normalised for matching (see [`normalize`]).
    keys: Vec<String>,
}

fn classes() -> &'static [Class] {
    static TABLE: OnceLock<Vec<Class>> = OnceLock::new();
    TABLE.get_or_init(|| {
        CLASSES_TXT
            .lines()
            .filter(|line| !line.trim().is_empty())
            .map(|line| {
                let names: Vec<&'static str> = line
                    .split(',')
                    .map(str::trim)
                    .filter(|n| !n.is_empty())
                    .collect();
                let keys = names.iter().map(|n| normalize(n)).collect();
                Class { names, keys }
            })
            .collect()
    })
}

/// Case-folds and treats `_` like a space and runs of spaces as one, so "Golden_Retriever"
/// finds "golden retriever".
fn normalize(s: &str) -> String {
    s.to_lowercase()
        .replace('_', " ")
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The display name of class `id` (its first synonym), or `None` outside `0..1000`.
pub fn name(id: u32) -> Option<&'static str> {
    synonyms(id).and_then(|names| names.first().copied())
}

/// All names of class `id`, display name first, or `None` outside `0..1000`.
pub fn synonyms(id: u32) -> Option<&'static [&'static str]> {
    classes().get(id as usize).map(|c| c.names.as_slice())
}

/// Resolves what a user typed to a class id.
///
/// Accepts a number `0..=999`, `1000` / `"unconditional"` / `"null"` for the unconditional class,
/// or any name of a class, ignoring case. A name shared by several classes is an
/// [`LabelError::Ambiguous`] error listing them; anything else unknown is
/// [`LabelError::NotFound`] with up to 8 close matches.
pub fn lookup(query: &str) -> Result<u32, LabelError> {
    let key = normalize(query);
    if key.is_empty() {
        return Err(LabelError::Empty);
    }
    if key.bytes().all(|b| b.is_ascii_digit()) {
        return lookup_id(&key);
    }
    if UNCONDITIONAL_WORDS.contains(&key.as_str()) {
        return Ok(UNCONDITIONAL);
    }
    let exact: Vec<u32> = classes()
        .iter()
        .enumerate()
        .filter(|(_, c)| c.keys.contains(&key))
        .map(|(id, _)| id as u32)
        .collect();
    match exact.as_slice() {
        [id] => Ok(*id),
        [] => Err(LabelError::NotFound {
            query: query.trim().to_owned(),
            suggestions: search(query, MAX_SUGGESTIONS),
        }),
        ids => Err(LabelError::Ambiguous {
            query: query.trim().to_owned(),
            candidates: ids.iter().map(|&id| (id, name(id).unwrap_or(""))).collect(),
        }),
    }
}

fn lookup_id(digits: &str) -> Result<u32, LabelError> {
    // Digits that overflow u64 are certainly out of range too.
    let id: u64 = digits.parse().unwrap_or(u64::MAX);
    if id <= u64::from(UNCONDITIONAL) {
        Ok(id as u32)
    } else {
        Err(LabelError::OutOfRange { id })
    }
}

/// How well a class matches a query; smaller sorts first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Rank {
    /// The query is the class id, or one of its names.
    Exact,
    /// A name starts with the query; shorter names first.
    Prefix { len: usize },
    /// A word of a name starts with the query; shorter names first.
    WordPrefix { len: usize },
    /// A name contains the query elsewhere.
    Substring { len: usize },
    /// A name (or run of its words) is within a few edits of the query.
    Fuzzy { distance: usize, len: usize },
}

/// Classes matching `query`, best first, at most `limit`, for a searchable picker.
///
/// Ranking: exact name or id, then names starting with the query, then names with a word starting
/// with it, then names containing it, then names within a few typing mistakes (edit distance,
/// transpositions counting as one). Ties go to the shorter name, then the lower id. Each class
/// appears once, with its display name. An empty query lists classes in id order.
pub fn search(query: &str, limit: usize) -> Vec<(u32, &'static str)> {
    let key = normalize(query);
    let classes = classes();
    if key.is_empty() {
        return (0..classes.len().min(limit) as u32)
            .filter_map(|id| Some((id, name(id)?)))
            .collect();
    }
    let id_match: Option<usize> = key.parse().ok().filter(|&id: &usize| id < classes.len());
    let mut ranked: Vec<(Rank, u32)> = classes
        .iter()
        .enumerate()
        .filter_map(|(id, class)| {
            let rank = if id_match == Some(id) {
                Some(Rank::Exact)
            } else {
                class.keys.iter().filter_map(|k| rank_name(&key, k)).min()
            };
            rank.map(|r| (r, id as u32))
        })
        .collect();
    ranked.sort();
    ranked
        .into_iter()
        .take(limit)
        .filter_map(|(_, id)| Some((id, name(id)?)))
        .collect()
}

fn rank_name(query: &str, name: &str) -> Option<Rank> {
    let len = name.chars().count();
    if name == query {
        return Some(Rank::Exact);
    }
    if name.starts_with(query) {
        return Some(Rank::Prefix { len });
    }
    if name.split([' ', '-']).any(|word| word.starts_with(query)) {
        return Some(Rank::WordPrefix { len });
    }
    if name.contains(query) {
        return Some(Rank::Substring { len });
    }
    let distance = fuzzy_distance(query, name);
    let allowed = (query.chars().count() / 4).clamp(1, 3);
    (distance <= allowed).then_some(Rank::Fuzzy { distance, len })
}

/// Edit distance from the query to the whole name or to any run of as many consecutive words of
/// the name as the query has, so "retreiver" is close to "golden retriever".
fn fuzzy_distance(query: &str, name: &str) -> usize {
    let words: Vec<&str> = name.split(' ').collect();
    let n = query.split(' ').count();
    let windows = (0..words.len().saturating_sub(n - 1)).map(|i| words[i..i + n].join(" "));
    std::iter::once(name.to_owned())
        .chain(windows)
        .map(|candidate| edit_distance(query, &candidate))
        .min()
        .unwrap_or(usize::MAX)
}

/// Optimal-string-alignment distance: insertions, deletions, substitutions and swaps of two
/// adjacent characters each cost 1 (swaps are the most common typing mistake).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_every_class() {
        assert_eq!(classes().len(), NUM_CLASSES);
        assert!(classes().iter().all(|c| !c.names.is_empty()));
    }

    #[test]
    fn edit_distances() {
        assert_eq!(edit_distance("retreiver", "retriever"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
        assert_eq!(fuzzy_distance("retreiver", "golden retriever"), 1);
    }
}
