// The mention rule of core/mentions.py, which is the one definition: "@"
// at the start or after a character that is not a username character,
// then a run of username characters ([\w.@+-] as Python's Unicode \w has
// them) less trailing dots. tests/unit/test_mentions.py runs one table of
// cases through both.
const MENTION_RE = /(?<![\p{L}\p{N}_.@+\-])@([\p{L}\p{N}_.@+\-]+)/gu;

// The lowercased usernames that `body` mentions, as a Set.
export function mentionedNames(body) {
  const names = new Set();
  for (const match of String(body).matchAll(MENTION_RE)) {
    const name = match[1].replace(/\.+$/u, "");
    if (name) names.add(name.toLowerCase());
  }
  return names;
}
