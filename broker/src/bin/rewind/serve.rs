//! `rewind serve`'s flags, built from the library's declaration of the options
//! ([`rewind_broker::config::OPTIONS`]): each flag's name, value name, summary, default
//! and variable come from there, and its value is read by the library's own reading
//! ([`OptionSpec::check_text`]), so a bad flag gets the message a bad variable or key
//! gets. What the flags say is handed to [`rewind_broker::config::Config::load`] as text,
//! in [`Sources`], which lays it over the variables, the file and the defaults.

use std::path::PathBuf;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use rewind_broker::config::{OptionSpec, Sources, OPTIONS};

/// What `rewind serve` was told on its command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServeArgs {
    /// The TOML file: `--config`, or `REWIND_CONFIG`.
    pub config: Option<PathBuf>,
    /// `--recover`: start even if stored files are damaged. What one start is asked to
    /// do, never configuration: a file or a variable that recovered on every start would
    /// hide damage for good.
    pub recover: bool,
    /// The option flags given: each option's name and its text, already read once by
    /// the option's reading (so known to be good but for the range check).
    pub flags: Vec<(String, String)>,
}

impl ServeArgs {
    /// Where [`rewind_broker::config::Config::load`] reads the configuration from.
    pub fn sources(&self) -> Sources {
        Sources {
            file: self.config.clone(),
            flags: self.flags.clone(),
        }
    }
}

/// The flag of `spec`: `--write-queue <N>  summary [default: 4096] [max:
/// 2305843009213693951] [env: REWIND_WRITE_QUEUE]` (`[max: …]` where the declaration gives
/// one).
fn option_arg(spec: &'static OptionSpec) -> Arg {
    let most = spec
        .most()
        .map(|most| format!(" [max: {most}]"))
        .unwrap_or_default();
    let arg = Arg::new(spec.name)
        .long(spec.flag())
        .value_name(spec.value_name)
        .action(ArgAction::Set);
    // A yes/no option given alone means yes: `--insecure-open`.
    let arg = if spec.value_name == "BOOL" {
        arg.num_args(0..=1).default_missing_value("true")
    } else {
        arg
    };
    arg.value_parser(move |text: &str| spec.check_text(text).map(|()| text.to_owned()))
        .help(format!(
            "{} [default: {}]{most} [env: {}]",
            spec.summary,
            spec.default_text(),
            spec.variable()
        ))
}

impl Args for ServeArgs {
    fn augment_args(cmd: Command) -> Command {
        cmd.arg(
            Arg::new("config")
                .long("config")
                .env("REWIND_CONFIG")
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help(
                    "TOML config file. Its keys are the option names: each flag below \
                     without its dashes and with `_` for `-` (`write_queue = 64`, \
                     `retention_max_age_secs = \"none\"`)",
                ),
        )
        .arg(
            Arg::new("recover")
                .long("recover")
                .action(ArgAction::SetTrue)
                .help(
                    "Start even if stored files are damaged: keep every record whose \
                     checksum holds, and give each namespace that lost anything a new \
                     epoch, its surviving events written again after its old `next` \
                     (docs/storage.md). Without it, damage refuses the start",
                ),
        )
        .args(OPTIONS.iter().map(option_arg))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

impl FromArgMatches for ServeArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ServeArgs {
            config: matches.get_one::<PathBuf>("config").cloned(),
            recover: matches.get_flag("recover"),
            flags: OPTIONS
                .iter()
                .filter_map(|o| {
                    let text = matches.get_one::<String>(o.name)?;
                    Some((o.name.to_owned(), text.clone()))
                })
                .collect(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        *self = ServeArgs::from_arg_matches(matches)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<ServeArgs, clap::Error> {
        let cmd = ServeArgs::augment_args(Command::new("serve").allow_negative_numbers(true));
        let matches =
            cmd.try_get_matches_from(std::iter::once("serve").chain(args.iter().copied()))?;
        ServeArgs::from_arg_matches(&matches)
    }

    #[test]
    fn a_yes_no_flag_alone_means_yes() {
        let args = parse(&["--insecure-open", "--auto-create"]).unwrap();
        assert!(args
            .flags
            .contains(&("insecure_open".to_owned(), "true".to_owned())));
        assert!(args
            .flags
            .contains(&("auto_create".to_owned(), "true".to_owned())));
        let args = parse(&["--auto-create", "false"]).unwrap();
        assert_eq!(args.flags, [("auto_create".to_owned(), "false".to_owned())]);
    }

    #[test]
    fn every_option_is_a_flag_named_after_it_with_its_default_in_help() {
        let mut cmd = ServeArgs::augment_args(Command::new("serve"));
        let help = cmd.render_help().to_string();
        // Each flag's entry: its name, value name and help, up to the next flag.
        let entries: Vec<&str> = help.split("\n      --").skip(1).collect();
        for spec in OPTIONS {
            // A yes/no flag's value may be left out (`--insecure-open`).
            let value = match spec.value_name {
                "BOOL" => "[<BOOL>]".to_owned(),
                other => format!("<{other}>"),
            };
            let entry = entries
                .iter()
                .find(|e| e.starts_with(&format!("{} {value}", spec.flag())))
                .unwrap_or_else(|| panic!("--{} not in {help}", spec.flag()));
            assert!(
                entry.contains(&format!("[default: {}]", spec.default_text())),
                "{entry}"
            );
            assert!(
                entry.contains(&format!("[env: {}]", spec.variable())),
                "{entry}"
            );
            // The most it takes, where it has one, and no other.
            let shown = spec.most().map(|most| format!("[max: {most}]"));
            let found = entry
                .split("[max: ")
                .nth(1)
                .and_then(|rest| rest.split(']').next())
                .map(|most| format!("[max: {}]", most.split_whitespace().collect::<String>()));
            assert_eq!(found, shown, "{entry}");
        }
        assert_eq!(entries.len(), OPTIONS.len() + 2, "{help}");
    }

    #[test]
    fn flags_become_sources_by_option_name() {
        let args = parse(&[
            "--write-queue",
            "9",
            "--retention-max-age-secs",
            "none",
            "--recover",
        ])
        .unwrap();
        assert!(args.recover);
        let mut flags = args.sources().flags;
        flags.sort();
        assert_eq!(
            flags,
            [
                ("retention_max_age_secs".to_owned(), "none".to_owned()),
                ("write_queue".to_owned(), "9".to_owned()),
            ]
        );
        assert_eq!(parse(&[]).unwrap().sources().flags, []);
    }

    #[test]
    fn a_bad_flag_is_refused_by_the_options_own_reading() {
        let err = parse(&["--write-queue", "-1"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::ValueValidation);
        let why = std::error::Error::source(&err).unwrap().to_string();
        let spec = OptionSpec::named("write_queue").unwrap();
        assert_eq!(why, spec.check_text("-1").unwrap_err());
        assert!(why.contains("from 1 up"), "{why}");
    }
}
