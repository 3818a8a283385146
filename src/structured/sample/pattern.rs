//! Strings that match a `pattern`, built from the parsed regular expression rather than by
//! trial: classes, literals, repetitions, alternation and anchors.

use regex_syntax::hir::{Class, Hir, HirKind};

/// Strings of the pattern's language, shortest first: each repetition taken its minimum number
/// of times, then a growing number more. Only those the `regex` crate agrees match are kept
/// (look-arounds and back-references do not parse, so they give none).
pub(super) fn pattern_strings(pattern: &str) -> impl Iterator<Item = String> {
    let parsed = regex_syntax::Parser::new().parse(pattern).ok();
    let re = regex::Regex::new(pattern).ok();
    let mut previous = None;
    [0, 1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128]
        .into_iter()
        .filter_map(move |extra| {
            let (hir, re) = (parsed.as_ref()?, re.as_ref()?);
            let mut text = String::new();
            render(hir, extra, &mut 0, &mut text)?;
            let new = previous.as_ref() != Some(&text) && re.is_match(&text);
            previous = Some(text.clone());
            new.then_some(text)
        })
}

/// Longest string worth building from a pattern (nested repetitions grow fast).
const MAX_PATTERN_TEXT: usize = 4096;

fn render(hir: &Hir, extra: u32, counter: &mut usize, out: &mut String) -> Option<()> {
    match hir.kind() {
        HirKind::Empty | HirKind::Look(_) => {}
        HirKind::Literal(literal) => out.push_str(std::str::from_utf8(&literal.0).ok()?),
        HirKind::Class(class) => {
            let ranges: Vec<(char, char)> = match class {
                Class::Unicode(c) => c.ranges().iter().map(|r| (r.start(), r.end())).collect(),
                Class::Bytes(c) => c
                    .ranges()
                    .iter()
                    .filter(|r| r.start() < 0x80)
                    .map(|r| (char::from(r.start()), char::from(r.end().min(0x7f))))
                    .collect(),
            };
            out.push(pick_char(&ranges, *counter)?);
            *counter += 1;
        }
        HirKind::Repetition(rep) => {
            let times = rep.min.saturating_add(extra);
            let times = rep.max.map_or(times, |max| times.min(max));
            for _ in 0..times {
                render(&rep.sub, extra, counter, out)?;
                if out.len() > MAX_PATTERN_TEXT {
                    return None;
                }
            }
        }
        HirKind::Capture(capture) => render(&capture.sub, extra, counter, out)?,
        HirKind::Concat(parts) => {
            for part in parts {
                render(part, extra, counter, out)?;
            }
        }
        // the first branch first, the others in turn as repetitions grow
        HirKind::Alternation(branches) => {
            let branch = branches.get(extra as usize % branches.len().max(1))?;
            render(branch, extra, counter, out)?
        }
    }
    Some(())
}

/// A readable member of a character class: letters, digits and a few separators first, taken
/// in turn so that `[A-Z]{3}` gives "ABC" rather than "AAA".
fn pick_char(ranges: &[(char, char)], counter: usize) -> Option<char> {
    const READABLE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_ .";
    let inside = |c: char| ranges.iter().any(|(s, e)| (*s..=*e).contains(&c));
    let readable: Vec<char> = READABLE.chars().filter(|c| inside(*c)).collect();
    if !readable.is_empty() {
        return Some(readable[counter % readable.len()]);
    }
    ranges
        .iter()
        .flat_map(|(s, e)| (*s..=*e).take(256))
        .find(|c| !c.is_control())
        .or_else(|| ranges.first().map(|(s, _)| *s))
}
