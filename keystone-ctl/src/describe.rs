//! `completion` and `man`: they describe this CLI and need no agent.

use std::io::Write;

use clap::ValueEnum;

use crate::{
    Cli, Command,
    client::{Failure, fail},
    exit,
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// `completion` and `man`: they describe this CLI and need no agent.
pub fn describe(command: &Command, out: &mut dyn Write) -> Option<Result<u8, Failure>> {
    use clap::CommandFactory;
    match command {
        Command::Completion { shell } => {
            let shell = match shell {
                Shell::Bash => clap_complete::Shell::Bash,
                Shell::Zsh => clap_complete::Shell::Zsh,
                Shell::Fish => clap_complete::Shell::Fish,
            };
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "keystone-ctl", &mut script);
            let mut script = String::from_utf8_lossy(&script).into_owned();
            if shell == clap_complete::Shell::Bash {
                // clap_complete 4.6 spells the verbs' state `keystone__subcmd__ctl__…` where
                // it matches and `keystone__ctl__…` where it sets it (the '-' in the name),
                // so nothing after the verb completed.
                script = script.replace("keystone__subcmd__ctl", "keystone__ctl");
            }
            Some(
                out.write_all(script.as_bytes())
                    .map(|()| exit::OK)
                    .map_err(|e| fail(exit::REFUSED, format!("cannot write the script: {e}"))),
            )
        }
        Command::Man { dir } => Some(
            clap_mangen::generate_to(Cli::command(), dir)
                .map(|()| exit::OK)
                .map_err(|e| {
                    fail(
                        exit::REFUSED,
                        format!("cannot write the man pages to {}: {e}", dir.display()),
                    )
                }),
        ),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::parse;

    /// The script `completion <shell>` prints, without any agent to talk to.
    fn completion(shell: &str) -> String {
        let cli = parse(&["completion", shell]).unwrap();
        let mut out = Vec::new();
        let code = describe(&cli.command, &mut out).expect("completion needs no agent");
        assert_eq!(code.ok(), Some(exit::OK));
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn completion_scripts_complete_verbs_and_flags() {
        let bash = completion("bash");
        // What bash offers after `keystone-ctl ca<TAB>`, and so on.
        let offered = |words: &str, cword: usize| {
            let out = std::process::Command::new("bash")
                .arg("-c")
                .arg(format!(
                    "{bash}\nCOMP_WORDS=({words}); COMP_CWORD={cword}\n\
                     f=$(complete -p keystone-ctl | sed -E 's/.*-F ([^ ]+).*/\\1/')\n\
                     \"$f\" keystone-ctl \"${{COMP_WORDS[COMP_CWORD]}}\" \"${{COMP_WORDS[COMP_CWORD-1]}}\"\n\
                     echo \"${{COMPREPLY[@]}}\""
                ))
                .output()
                .expect("bash runs");
            String::from_utf8_lossy(&out.stdout).trim().to_owned()
        };
        assert_eq!(offered("keystone-ctl ca", 1), "canary");
        assert_eq!(offered("keystone-ctl canary pro", 2), "promote");
        assert_eq!(offered("keystone-ctl status --wa", 2), "--watch");
        let zsh = completion("zsh");
        assert!(zsh.starts_with("#compdef keystone-ctl"), "{zsh}");
        let fish = completion("fish");
        assert!(
            fish.contains("complete -c keystone-ctl") && fish.contains("-a \"canary\""),
            "{fish}"
        );
        for script in [&bash, &zsh, &fish] {
            for word in ["canary", "switch", "wait", "--token-file"] {
                assert!(script.contains(word), "{word} missing from:\n{script}");
            }
        }
        let err = parse(&["completion", "powershell"])
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("[possible values: bash, zsh, fish]"), "{err}");
    }

    /// Every verb's help ends with examples of itself (hidden ones aside).
    #[test]
    fn every_verb_has_examples() {
        fn walk(command: &clap::Command, path: &str, missing: &mut Vec<String>) {
            for sub in command.get_subcommands() {
                if sub.is_hide_set() || sub.get_name() == "help" {
                    continue;
                }
                let path = format!("{path} {}", sub.get_name()).trim().to_owned();
                let help = sub
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                if !help.contains(&format!("Examples:\n  keystone-ctl {path}")) {
                    missing.push(path.clone());
                }
                walk(sub, &path, missing);
            }
        }
        let mut command = Cli::command();
        command.build();
        let mut missing = Vec::new();
        walk(&command, "", &mut missing);
        assert!(missing.is_empty(), "verbs without examples: {missing:?}");
    }

    #[test]
    fn man_pages_cover_every_verb() {
        let dir = tempfile::tempdir().unwrap();
        let cli = parse(&["man", dir.path().to_str().unwrap()]).unwrap();
        let code = describe(&cli.command, &mut Vec::new()).expect("man needs no agent");
        assert_eq!(code.ok(), Some(exit::OK));
        for page in [
            "keystone-ctl.1",
            "keystone-ctl-canary-start.1",
            "keystone-ctl-wait.1",
        ] {
            let text = std::fs::read_to_string(dir.path().join(page))
                .unwrap_or_else(|e| panic!("{page}: {e}"));
            assert!(text.contains(".TH keystone-ctl"), "{page}:\n{text}");
        }
    }
}
