"""A deterministic sample hospital: synthetic patients as messy landing files, with an answer key.

    from medlake.sample import generate
    manifest = generate(Path("landing"), patients=1000, seed=7)

writes `landing/{fhir,hl7v2,csv,dicom,vitals,vcf}/` (the same people in every source) and
`landing/_truth.json`, whose schema is documented in `medlake.sample.truth`.

Modules: `people` (who the patients are and what was recorded, built once per person from
the seed), `vocab` (names and real clinical codes), one writer per format (`fhir`, `hl7v2`, `csv`, `vitals`, `dicom`, `vcf`), `truth`
(the answer key) and `landing` (the entry point).
"""

from medlake.sample.landing import SampleManifest, generate

__all__ = ["SampleManifest", "generate"]
