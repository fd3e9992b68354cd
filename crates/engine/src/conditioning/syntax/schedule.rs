//! Prompt editing and alternation: which text the prompt stands for at each sampling step, as
//! A1111's `get_learned_conditioning_prompt_schedules` computes it (no hires pass).
//!
//! The grammar (A1111's, read as its Earley parser resolves it):
//! - a *prompt* is a sequence of: plain text (anything but `\ [ ] ( ) : |`, with `\x` escapes),
//!   `(prompt)`, `(prompt:prompt)`, `[prompt]` (kept as written), `[from:to:when]`,
//!   `[to:when]` (from is nothing) and `[a|b|…]` (an option may be empty);
//! - at the top level a `[ ] ( ) :` that does not open or close such a part is text;
//! - `when` is a number (`5`, `0.5`, `-1`, `1e3`); with a dot it is a fraction of the steps
//!   (truncated after multiplying), without it a step; it is capped at the step count.
//! - a `|` outside `[…]`, or a `\` at the very end, makes the whole prompt unparsable: it then
//!   stands for itself at every step, edits and all.
//!
//! The schedule lists the steps at which the text may change (every edit's `when` that is at
//! least 1, every step when there is an alternation, and the last step), each with the text in
//! force up to and including it: `[from:to:when]` is `from` while the step is ≤ `when`; an
//! alternation shows its options in turn (option `(step − 1) mod n`) — and of the chosen option
//! only its first part (its first run of text, bracketed group or edit), which is what A1111
//! yields (`[cat (x)|dog]` alternates between `cat ` and `dog`).

use super::attention::is_space;

/// A schedule: `(last step, text)` pairs in step order; the text applies to steps up to and
/// including its step (after the previous entry's).
pub type Schedule = Vec<(usize, String)>;

/// A parsed part of a prompt.
#[derive(Debug, Clone)]
enum Node {
    /// Text kept as written (plain text, whitespace, stray brackets and colons).
    Text(String),
    /// A bracketed group kept with its brackets: its parts.
    Group(Vec<Node>),
    /// `[from:to:when]`; `from` is `None` for `[to:when]`.
    Edit {
        from: Option<Vec<Node>>,
        to: Vec<Node>,
        when: String,
    },
    /// `[a|b|…]`.
    Alternate(Vec<Vec<Node>>),
}

/// The schedule of `prompt` over `steps` sampling steps, as
/// `get_learned_conditioning_prompt_schedules([prompt], steps)[0]`.
pub fn schedule(prompt: &str, steps: usize) -> Schedule {
    let Some(tree) = Parser::new(prompt).top() else {
        return vec![(steps, prompt.to_string())];
    };
    let mut at = vec![steps];
    collect_steps(&tree, steps, &mut at);
    at.sort_unstable();
    at.dedup();
    at.into_iter()
        .map(|step| {
            let mut text = String::new();
            render(&tree, step, steps, &mut text);
            (step, text)
        })
        .collect()
}

/// The text in force at `step` of a schedule (A1111's choice during sampling: the first entry
/// whose step is ≥ `step`; `step` counts from 0 at the first step run).
pub fn text_at(schedule: &[(usize, String)], step: usize) -> usize {
    schedule
        .iter()
        .position(|(end, _)| step <= *end)
        .unwrap_or(0)
}

/// `when` as a step: `float(when) × steps` when it has a dot, else `float(when)`; truncated,
/// capped at `steps`.
fn when_step(when: &str, steps: usize) -> i64 {
    let v: f64 = when.parse().unwrap_or(0.0);
    let v = if when.contains('.') {
        v * steps as f64
    } else {
        v
    };
    // Python's int() truncates; an enormous value saturates (Python would raise).
    (v.trunc() as i64).min(steps as i64)
}

fn collect_steps(nodes: &[Node], steps: usize, at: &mut Vec<usize>) {
    for node in nodes {
        match node {
            Node::Text(_) => {}
            Node::Group(parts) => collect_steps(parts, steps, at),
            Node::Edit { from, to, when } => {
                if let Some(from) = from {
                    collect_steps(from, steps, at);
                }
                collect_steps(to, steps, at);
                let step = when_step(when, steps);
                if step >= 1 {
                    at.push(step as usize);
                }
            }
            Node::Alternate(options) => {
                for option in options {
                    collect_steps(option, steps, at);
                }
                at.extend(1..=steps);
            }
        }
    }
}

fn render(nodes: &[Node], step: usize, steps: usize, out: &mut String) {
    for node in nodes {
        render_node(node, step, steps, out);
    }
}

fn render_node(node: &Node, step: usize, steps: usize, out: &mut String) {
    match node {
        Node::Text(text) => out.push_str(text),
        Node::Group(parts) => render(parts, step, steps, out),
        Node::Edit { from, to, when } => {
            if step as i64 <= when_step(when, steps) {
                if let Some(from) = from {
                    render(from, step, steps, out);
                }
            } else {
                render(to, step, steps, out);
            }
        }
        Node::Alternate(options) => {
            let option = &options[(step.max(1) - 1) % options.len()];
            if let Some(first) = option.first() {
                render_node(first, step, steps, out);
            }
        }
    }
}

/// A backtracking parser over the prompt's characters.
struct Parser<'a> {
    s: &'a str,
}

impl<'a> Parser<'a> {
    fn new(s: &'a str) -> Self {
        Parser { s }
    }

    fn peek(&self, at: usize) -> Option<char> {
        self.s[at..].chars().next()
    }

    /// The whole prompt: parts, with stray `[ ] ( ) :` as text; `None` if unparsable.
    fn top(&self) -> Option<Vec<Node>> {
        let mut nodes = Vec::new();
        let mut at = 0;
        while at < self.s.len() {
            let (mut parts, next) = self.prompt(at)?;
            nodes.append(&mut parts);
            at = next;
            match self.peek(at) {
                None => break,
                Some(c @ ('[' | ']' | '(' | ')' | ':')) => {
                    nodes.push(Node::Text(c.to_string()));
                    at += 1;
                }
                // `|` outside an alternation, or a lone trailing `\`.
                Some(_) => return None,
            }
        }
        Some(nodes)
    }

    /// A prompt from `at`: its parts and where it ends (at the first character that cannot
    /// continue it). Never fails: a prompt may be empty.
    fn prompt(&self, mut at: usize) -> Option<(Vec<Node>, usize)> {
        let mut nodes = Vec::new();
        loop {
            match self.peek(at) {
                Some('(') | Some('[') => match self.bracketed(at) {
                    Some((node, next)) => {
                        nodes.push(node);
                        at = next;
                    }
                    None => return Some((nodes, at)),
                },
                Some(']' | ')' | ':' | '|') | None => return Some((nodes, at)),
                Some(_) => {
                    let end = self.plain_end(at);
                    if end == at {
                        return Some((nodes, at));
                    }
                    nodes.push(Node::Text(self.s[at..end].to_string()));
                    at = end;
                }
            }
        }
    }

    /// End of a run of plain text from `at` (`\` escapes any character but a newline).
    fn plain_end(&self, mut at: usize) -> usize {
        let mut chars = self.s[at..].chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '[' | ']' | '(' | ')' | ':' | '|' => break,
                '\\' => match chars.peek() {
                    Some(&e) if e != '\n' => {
                        chars.next();
                        at += 1 + e.len_utf8();
                    }
                    _ => break,
                },
                _ => at += c.len_utf8(),
            }
        }
        at
    }

    /// A `(…)` or `[…]` part at `at` (which holds the opening bracket), or `None`.
    fn bracketed(&self, at: usize) -> Option<(Node, usize)> {
        let open = self.peek(at)?;
        let (first, mut at) = self.prompt(at + 1)?;
        let text = |s: &str| Node::Text(s.to_string());
        if open == '(' {
            let mut parts = vec![text("(")];
            parts.extend(first);
            if self.peek(at) == Some(':') {
                let (second, next) = self.prompt(at + 1)?;
                parts.push(text(":"));
                parts.extend(second);
                at = next;
            }
            return (self.peek(at) == Some(')')).then(|| {
                parts.push(text(")"));
                (Node::Group(parts), at + 1)
            });
        }
        match self.peek(at)? {
            ']' => {
                let mut parts = vec![text("[")];
                parts.extend(first);
                parts.push(text("]"));
                Some((Node::Group(parts), at + 1))
            }
            '|' => {
                let mut options = vec![first];
                while self.peek(at) == Some('|') {
                    let (option, next) = self.prompt(at + 1)?;
                    options.push(option);
                    at = next;
                }
                (self.peek(at) == Some(']')).then(|| (Node::Alternate(options), at + 1))
            }
            ':' => {
                if let Some((when, end)) = self.when(at + 1) {
                    return Some((
                        Node::Edit {
                            from: None,
                            to: first,
                            when,
                        },
                        end,
                    ));
                }
                let (second, next) = self.prompt(at + 1)?;
                if self.peek(next) != Some(':') {
                    return None;
                }
                let (when, end) = self.when(next + 1)?;
                Some((
                    Node::Edit {
                        from: Some(first),
                        to: second,
                        when,
                    },
                    end,
                ))
            }
            _ => None,
        }
    }

    /// `[spaces] number [spaces] ]` from `at`: the number's text and the end after `]`.
    fn when(&self, at: usize) -> Option<(String, usize)> {
        let skip = |from: usize| {
            from + self.s[from..]
                .find(|c: char| !is_space(c))
                .unwrap_or(self.s.len() - from)
        };
        let start = skip(at);
        let end = start
            + self.s[start..]
                .find(|c: char| is_space(c) || c == ']')
                .unwrap_or(self.s.len() - start);
        let number = &self.s[start..end];
        let close = skip(end);
        (is_signed_number(number) && self.peek(close) == Some(']'))
            .then(|| (number.to_string(), close + 1))
    }
}

/// Lark's `SIGNED_NUMBER`: an optional sign, then digits with an optional fraction (`1`, `1.`,
/// `1.5`, `.5`) and an optional exponent (`1e3`, `1.5E-2`).
fn is_signed_number(s: &str) -> bool {
    let s = s.strip_prefix(['+', '-']).unwrap_or(s);
    let (mantissa, exponent) = match s.find(['e', 'E']) {
        Some(i) => (&s[..i], Some(&s[i + 1..])),
        None => (s, None),
    };
    let digits = |t: &str| !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit());
    let mantissa_ok = match mantissa.split_once('.') {
        Some((int, frac)) => {
            (digits(int) && (frac.is_empty() || digits(frac))) || (int.is_empty() && digits(frac))
        }
        None => digits(mantissa),
    };
    let exponent_ok = exponent.is_none_or(|e| digits(e.strip_prefix(['+', '-']).unwrap_or(e)));
    mantissa_ok && exponent_ok
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(prompt: &str, steps: usize) -> Vec<(usize, &'static str)> {
        schedule(prompt, steps)
            .into_iter()
            .map(|(s, t)| (s, &*t.leak()))
            .collect()
    }

    #[test]
    fn edits_switch_at_their_step() {
        assert_eq!(texts("a [b:c:0.5] d", 10), [(5, "a b d"), (10, "a c d")]);
        assert_eq!(texts("[a: 5]", 10), [(5, ""), (10, "a")]);
        assert_eq!(texts("[a::3]", 10), [(3, "a"), (10, "")]);
        assert_eq!(texts("[a:b:1e3]", 10), [(10, "a")]);
        assert_eq!(texts("[a:b:-2]", 10), [(10, "b")]);
    }

    #[test]
    fn alternation_takes_the_first_part_of_each_option() {
        assert_eq!(
            texts("[blue eyes|red hair] x", 3),
            [(1, "blue eyes x"), (2, "red hair x"), (3, "blue eyes x")]
        );
        assert_eq!(texts("[a (b)|c]", 2), [(1, "a "), (2, "c")]);
    }

    #[test]
    fn unparsable_prompts_stand_for_themselves() {
        assert_eq!(texts("a|b", 10), [(10, "a|b")]);
        assert_eq!(texts("[a|b:3]", 10), [(10, "[a|b:3]")]);
        assert_eq!(texts("x \\", 10), [(10, "x \\")]);
        assert_eq!(texts("[a:b:c:5]", 10), [(10, "[a:b:c:5]")]);
    }

    #[test]
    fn text_at_picks_the_first_entry_not_yet_over() {
        let s = schedule("[a:b:3]", 10);
        assert_eq!(text_at(&s, 0), 0);
        assert_eq!(text_at(&s, 3), 0);
        assert_eq!(text_at(&s, 4), 1);
        assert_eq!(text_at(&s, 99), 0);
    }
}
