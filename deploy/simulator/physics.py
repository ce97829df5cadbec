"""One vehicle and the charger behind its meter, minute by minute.

The model is simple but keeps the relations the analytics rely on:

- the meter sees the AC the charger draws: its rated power (7-22 kW for AC
  wall boxes, 50-150 kW for the share of DC fast chargers), tapering above
  80 % state of charge, so one minute is at most 2.5 kWh, far below the
  gateway's 10 kWh plausibility cap;
- the battery receives DC = AC x the vehicle's efficiency (healthy
  0.88-0.95; a faulty vehicle 0.70-0.84, which the API must flag);
- state of charge rises with the DC stored, stops near the session's target
  (80-100 %) and falls slowly while the vehicle is driven between sessions;
- battery temperature relaxes towards ambient plus a rise proportional to
  the charge rate; grid voltage is about 230 V with noise and a sag under load.

Energies are rounded to 0.1 Wh and the rest to one decimal, like real
devices; what is sent is exactly what the ground truth sums.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

AC_POWER_KW = (7.0, 22.0)
DC_FAST_POWER_KW = (50.0, 150.0)
HEALTHY_EFFICIENCY = (0.88, 0.95)
FAULTY_EFFICIENCY = (0.70, 0.84)
#: Never exceed this per minute, whatever the charger: the gateway refuses > 10 kWh.
MAX_KWH_PER_MINUTE = 9.5
#: Battery temperature rise at steady state per kW of charge power.
HEAT_C_PER_KW = 0.12
#: Fraction of the gap to the steady temperature closed each minute.
THERMAL_RESPONSE = 0.15
NOMINAL_VOLTAGE = 230.0
VOLTAGE_SAG_PER_KW = 0.04


@dataclass(frozen=True, slots=True)
class VehicleProfile:
    """What does not change about one vehicle and its charger during a run."""

    capacity_kwh: float
    efficiency: float
    faulty: bool
    charger_kw: float
    fast_charger: bool
    ambient_c: float
    supply_voltage: float
    #: Second of the minute at which this pair sends its heartbeat.
    phase_s: int

    @classmethod
    def draw(cls, rng: random.Random, faulty: bool, fast_share: float) -> VehicleProfile:
        """A random but plausible vehicle; every draw comes from ``rng`` (deterministic)."""
        fast = rng.random() < fast_share
        low, high = FAULTY_EFFICIENCY if faulty else HEALTHY_EFFICIENCY
        return cls(
            capacity_kwh=rng.uniform(40.0, 100.0),
            efficiency=rng.uniform(low, high),
            faulty=faulty,
            charger_kw=rng.uniform(*(DC_FAST_POWER_KW if fast else AC_POWER_KW)),
            fast_charger=fast,
            ambient_c=rng.uniform(5.0, 30.0),
            supply_voltage=rng.uniform(NOMINAL_VOLTAGE - 4.0, NOMINAL_VOLTAGE + 4.0),
            phase_s=rng.randrange(60),
        )


@dataclass(frozen=True, slots=True)
class Minute:
    """What the meter and the vehicle report for one minute."""

    kwh_ac: float
    voltage: float
    kwh_dc: float
    soc: float
    battery_temp: float


class VehicleModel:
    """The evolving state of one vehicle; :meth:`step` advances it one minute.

    Deterministic: the same profile and ``rng`` state give the same minutes.
    """

    def __init__(self, profile: VehicleProfile, rng: random.Random) -> None:
        self.profile = profile
        self.rng = rng
        self.soc = rng.uniform(20.0, 80.0)
        self.temp = profile.ambient_c + rng.uniform(0.0, 3.0)
        # Half the fleet is plugged in when the run starts, so a short run
        # already shows charging sessions.
        self.charging = rng.random() < 0.5
        self.target_soc = rng.uniform(80.0, 100.0)
        self.idle_left = rng.randrange(30, 360)
        self.drive_rate = 0.0

    def step(self) -> Minute:
        """Advance one minute and return what both devices measured in it."""
        rng = self.rng
        profile = self.profile
        kwh_ac = kwh_dc = power_kw = 0.0
        if self.charging:
            power_kw = profile.charger_kw * self._taper() * rng.uniform(0.97, 1.0)
            kwh_ac = round(min(power_kw / 60.0, MAX_KWH_PER_MINUTE), 4)
            kwh_dc = round(kwh_ac * profile.efficiency, 4)
            self.soc = min(100.0, self.soc + kwh_dc / profile.capacity_kwh * 100.0)
            if self.soc >= self.target_soc - 0.05:
                self._unplug()
        else:
            self.soc = max(5.0, self.soc - self.drive_rate)
            self.idle_left -= 1
            if self.idle_left <= 0 or self.soc <= 10.0:
                self._plug_in()
        heat = HEAT_C_PER_KW * power_kw + (2.0 if self.drive_rate > 0 else 0.0)
        steady = profile.ambient_c + heat
        self.temp += (steady - self.temp) * THERMAL_RESPONSE + rng.gauss(0.0, 0.15)
        self.temp = min(100.0, max(-40.0, self.temp))
        voltage = profile.supply_voltage - VOLTAGE_SAG_PER_KW * power_kw + rng.gauss(0.0, 1.2)
        return Minute(
            kwh_ac=kwh_ac,
            voltage=round(min(1000.0, max(0.0, voltage)), 1),
            kwh_dc=kwh_dc,
            soc=round(self.soc, 1),
            battery_temp=round(self.temp, 1),
        )

    def _taper(self) -> float:
        # Constant power up to 80 %, then linearly down to a trickle at 100 %;
        # fast chargers taper harder (the cells cannot take high current when full).
        if self.soc < 80.0:
            return 1.0
        floor = 0.05 if self.profile.fast_charger else 0.2
        return max(floor, (100.0 - self.soc) / 20.0)

    def _unplug(self) -> None:
        self.charging = False
        self.idle_left = self.rng.randrange(30, 360)
        # Two idle periods in three include some driving.
        self.drive_rate = self.rng.uniform(0.05, 0.25) if self.rng.random() < 0.66 else 0.0

    def _plug_in(self) -> None:
        self.charging = True
        self.drive_rate = 0.0
        self.target_soc = self.rng.uniform(max(80.0, self.soc + 5.0), 100.0)
