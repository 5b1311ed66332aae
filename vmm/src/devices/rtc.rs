//! A CMOS real-time clock at ports 0x70/0x71. Without one, Debian's kernel stalls ~5.5 s
//! probing it; with it, the guest also boots with the host's wall-clock time.

const REG_SECONDS: u8 = 0x00;
const REG_MINUTES: u8 = 0x02;
const REG_HOURS: u8 = 0x04;
const REG_WEEKDAY: u8 = 0x06;
const REG_DAY: u8 = 0x07;
const REG_MONTH: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
/// Register B: 24-hour mode; bit 2 (binary instead of BCD) is the guest's choice.
const REG_B_24H: u8 = 1 << 1;
const REG_B_BINARY: u8 = 1 << 2;

/// Broken-down UTC time, as the RTC reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RtcTime {
    /// 0-59.
    pub sec: u8,
    /// 0-59.
    pub min: u8,
    /// 0-23.
    pub hour: u8,
    /// 1-7, Sunday is 1.
    pub weekday: u8,
    /// 1-31.
    pub day: u8,
    /// 1-12.
    pub month: u8,
    /// Full year.
    pub year: u16,
}

impl RtcTime {
    /// The host's current UTC time.
    pub fn now() -> Self {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Self::from_unix(secs)
    }

    /// Converts seconds since the epoch (civil-from-days, proleptic Gregorian).
    pub fn from_unix(secs: u64) -> Self {
        let days = (secs / 86400) as i64;
        let rem = secs % 86400;
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u8;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u8;
        let year = (yoe + era * 400 + i64::from(month <= 2)) as u16;
        RtcTime {
            sec: (rem % 60) as u8,
            min: (rem / 60 % 60) as u8,
            hour: (rem / 3600) as u8,
            // 1970-01-01 was a Thursday (5 with Sunday = 1).
            weekday: ((days + 4).rem_euclid(7) + 1) as u8,
            day,
            month,
            year,
        }
    }
}

/// The CMOS RTC and its 128 bytes of NVRAM.
/// (Fields are crate-visible so `persist::devices` can save and restore them.)
pub struct CmosRtc {
    pub(crate) index: u8,
    pub(crate) nvram: [u8; 128],
}

impl Default for CmosRtc {
    fn default() -> Self {
        let mut nvram = [0u8; 128];
        nvram[REG_A as usize] = 0x26; // 32.768 kHz time base, 1024 Hz rate; UIP clear.
        nvram[REG_B as usize] = REG_B_24H;
        nvram[REG_D as usize] = 0x80; // Valid RAM and time: the battery is fine.
        CmosRtc { index: 0, nvram }
    }
}

fn bcd(v: u8) -> u8 {
    ((v / 10) << 4) | (v % 10)
}

impl CmosRtc {
    /// Reads the index (offset 0) or data (offset 1) port.
    pub fn read(&mut self, offset: u8) -> u8 {
        if offset == 0 {
            return self.index;
        }
        self.read_register(self.index, RtcTime::now())
    }

    /// Reads one register as of `now`.
    pub fn read_register(&self, reg: u8, now: RtcTime) -> u8 {
        let binary = self.nvram[REG_B as usize] & REG_B_BINARY != 0;
        let enc = |v: u8| if binary { v } else { bcd(v) };
        match reg {
            REG_SECONDS => enc(now.sec),
            REG_MINUTES => enc(now.min),
            REG_HOURS => enc(now.hour),
            REG_WEEKDAY => enc(now.weekday),
            REG_DAY => enc(now.day),
            REG_MONTH => enc(now.month),
            REG_YEAR => enc((now.year % 100) as u8),
            REG_CENTURY => enc((now.year / 100) as u8),
            REG_C => 0, // No interrupt pending.
            r => self.nvram[(r & 0x7f) as usize],
        }
    }

    /// Writes the index (offset 0; bit 7 is the NMI mask) or data (offset 1) port. Time
    /// registers are read-only views of the host clock; the rest is NVRAM.
    pub fn write(&mut self, offset: u8, value: u8) {
        if offset == 0 {
            self.index = value & 0x7f;
            return;
        }
        match self.index {
            REG_SECONDS..=REG_YEAR | REG_C | REG_D | REG_CENTURY => {}
            REG_A => self.nvram[REG_A as usize] = value & 0x7f, // UIP is read-only.
            i => self.nvram[i as usize] = value,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unix_time_converts_to_civil_time() {
        // 2026-11-25 14:56:41 UTC, a Wednesday.
        let t = RtcTime::from_unix(1_795_618_601);
        assert_eq!(
            t,
            RtcTime {
                sec: 41,
                min: 56,
                hour: 14,
                weekday: 4,
                day: 25,
                month: 11,
                year: 2026
            }
        );
        let leap = RtcTime::from_unix(951_782_400); // 2000-02-29 00:00:00, a Tuesday.
        assert_eq!(
            (leap.year, leap.month, leap.day, leap.weekday),
            (2000, 2, 29, 3)
        );
    }

    #[test]
    fn registers_are_bcd_unless_the_guest_asks_for_binary() {
        let now = RtcTime::from_unix(1_795_618_601);
        let mut rtc = CmosRtc::default();
        assert_eq!(rtc.read_register(REG_MINUTES, now), 0x56);
        assert_eq!(rtc.read_register(REG_CENTURY, now), 0x20);
        assert_eq!(rtc.read_register(REG_D, now), 0x80);
        assert_eq!(
            rtc.read_register(REG_A, now) & 0x80,
            0,
            "update never in progress"
        );
        rtc.write(0, REG_B);
        rtc.write(1, REG_B_24H | REG_B_BINARY);
        assert_eq!(rtc.read_register(REG_MINUTES, now), 56);
        assert_eq!(rtc.read_register(REG_YEAR, now), 26);
    }

    #[test]
    fn nvram_keeps_what_the_guest_writes_and_index_masks_nmi() {
        let mut rtc = CmosRtc::default();
        rtc.write(0, 0x80 | 0x40);
        rtc.write(1, 0xab);
        assert_eq!(rtc.read(0), 0x40);
        assert_eq!(rtc.read(1), 0xab);
    }
}
