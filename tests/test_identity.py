"""Synthetic identities: ages agree with dates, studies in date order, IDs unique per namespace."""

from __future__ import annotations

import datetime as dt

from medsynth.dicom_io.identity import IdentityOptions, age_on, make_patient, make_study, run_entropy


def test_age_agrees_with_birth_and_study_dates_and_studies_are_in_order() -> None:
    opts = IdentityOptions()
    entropy = run_entropy(7, "ns")
    for p in range(300):
        pat = make_patient(opts, entropy, p, n_studies=3)
        studies = [make_study(opts, entropy, pat, p, s) for s in range(3)]
        assert opts.age_years[0] <= pat.age_years <= opts.age_years[1]
        assert studies[0].age_years == pat.age_years
        for st in studies:
            assert opts.study_dates[0] <= st.date <= opts.study_dates[1]
            assert st.age_years == age_on(pat.birth_date, st.date)
        when = [dt.datetime.combine(st.date, st.time) for st in studies]
        assert when == sorted(when)
    assert age_on(dt.date(1960, 3, 1), dt.date(2020, 2, 29)) == 59
    assert age_on(dt.date(1960, 3, 1), dt.date(2020, 3, 1)) == 60


def test_ids_and_accessions_unique_within_and_across_namespaces() -> None:
    opts = IdentityOptions()
    seen_acc: set[str] = set()
    seen_pid: set[str] = set()
    for ns in ("ct-pelvis/pack-a", "mr-brain/pack-b"):
        entropy = run_entropy(7, ns)
        for p in range(2000):
            pat = make_patient(opts, entropy, p, n_studies=5)
            assert pat.patient_id not in seen_pid
            seen_pid.add(pat.patient_id)
            for s in range(5):
                acc = make_study(opts, entropy, pat, p, s).accession
                assert len(acc) <= 16 and acc.startswith("SYN") and acc not in seen_acc
                seen_acc.add(acc)
    assert len(seen_acc) == 20000
    # the same namespace and seed give the same identities; another seed does not
    a = make_patient(opts, run_entropy(7, "x"), 0)
    assert a == make_patient(opts, run_entropy(7, "x"), 0) != make_patient(opts, run_entropy(8, "x"), 0)
    long_prefix = IdentityOptions(id_prefix="HOSPITAL")
    pat = make_patient(long_prefix, 1, 0)
    assert len(make_study(long_prefix, 1, pat, 0, 0).accession) == 16
