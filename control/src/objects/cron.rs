//! Cron schedules as CronJobs write them: five fields (minute, hour, day of month, month, day of
//! week) with `*`, lists, ranges, steps and names, or a macro (`@hourly`, `@daily`, ...).

use jiff::civil::DateTime;

/// A parsed schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    minutes: Vec<bool>,
    hours: Vec<bool>,
    days: Vec<bool>,
    months: Vec<bool>,
    weekdays: Vec<bool>,
    /// Day of month and day of week both restricted: either may match (cron's rule).
    either_day: bool,
}

fn names(field: &str, names: &[&str], offset: u32) -> String {
    let mut out = field.to_lowercase();
    for (i, n) in names.iter().enumerate() {
        out = out.replace(n, &(i as u32 + offset).to_string());
    }
    out
}

fn parse_field(field: &str, min: u32, max: u32) -> Result<Vec<bool>, String> {
    let mut set = vec![false; (max + 1) as usize];
    for part in field.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .map_err(|_| format!("invalid step in {part:?}"))?,
            ),
            None => (part, 1),
        };
        if step == 0 {
            return Err(format!("invalid step in {part:?}"));
        }
        let (lo, hi) = if range == "*" || range == "?" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            (
                a.parse().map_err(|_| format!("invalid range {range:?}"))?,
                b.parse().map_err(|_| format!("invalid range {range:?}"))?,
            )
        } else {
            let v: u32 = range.parse().map_err(|_| format!("invalid value {range:?}"))?;
            (v, if part.contains('/') { max } else { v })
        };
        if lo < min || hi > max || lo > hi {
            return Err(format!("{part:?} is out of range {min}-{max}"));
        }
        for v in (lo..=hi).step_by(step as usize) {
            set[v as usize] = true;
        }
    }
    Ok(set)
}

impl Schedule {
    /// Parses a schedule; the error says what is wrong.
    pub fn parse(spec: &str) -> Result<Self, String> {
        let expanded = match spec.trim() {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        let fields: Vec<&str> = expanded.split_whitespace().collect();
        if fields.len() != 5 {
            return Err(format!(
                "expected exactly 5 fields, found {}: {spec:?}",
                fields.len()
            ));
        }
        let months = names(
            fields[3],
            &[
                "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
            ],
            1,
        );
        let weekdays = names(fields[4], &["sun", "mon", "tue", "wed", "thu", "fri", "sat"], 0);
        let mut weekdays = parse_field(&weekdays, 0, 7)?;
        if weekdays[7] {
            weekdays[0] = true;
        }
        Ok(Self {
            minutes: parse_field(fields[0], 0, 59)?,
            hours: parse_field(fields[1], 0, 23)?,
            days: parse_field(fields[2], 1, 31)?,
            months: parse_field(&months, 1, 12)?,
            weekdays,
            either_day: fields[2] != "*" && fields[2] != "?" && fields[4] != "*" && fields[4] != "?",
        })
    }

    /// Whether the schedule fires at this (whole) minute.
    pub fn matches(&self, t: DateTime) -> bool {
        let day = self.days[t.day() as usize];
        let weekday = self.weekdays[t.weekday().to_sunday_zero_offset() as usize];
        let day_ok = if self.either_day {
            day || weekday
        } else {
            day && weekday
        };
        self.minutes[t.minute() as usize]
            && self.hours[t.hour() as usize]
            && self.months[t.month() as usize]
            && day_ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn fields_steps_names_and_day_rules() {
        let s = Schedule::parse("*/15 9-17 * * mon-fri").unwrap();
        assert!(s.matches(date(2026, 11, 26).at(9, 30, 0, 0)));
        assert!(!s.matches(date(2026, 11, 28).at(9, 30, 0, 0)));
        assert!(!s.matches(date(2026, 11, 26).at(9, 31, 0, 0)));
        let either = Schedule::parse("0 0 1 * sun").unwrap();
        assert!(either.matches(date(2026, 11, 1).at(0, 0, 0, 0)));
        assert!(either.matches(date(2026, 11, 29).at(0, 0, 0, 0)));
        assert!(
            Schedule::parse("@hourly")
                .unwrap()
                .matches(date(2026, 1, 1).at(5, 0, 0, 0))
        );
        assert!(Schedule::parse("61 * * * *").is_err());
        assert!(Schedule::parse("* * *").is_err());
    }
}
