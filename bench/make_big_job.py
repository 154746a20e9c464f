"""Make a synthetic RELION Class2D job of facility size for benchmarks.

    python bench/make_big_job.py DIR --particles 1000000 --classes 200 --box 128 --angpix 1.5

Writes DIR/Class2D/job001/run_it025_{optimiser,model,data}.star and run_it025_classes.mrcs
(project-relative paths, RELION 3.1 layout). The data.star rows look like a real Class2D
run (22 columns, RELION's number formatting); class images are smooth random blobs.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ranker.runtime.geometry import circle_mask  # noqa: E402
from ranker.runtime.mrc import write_mrc  # noqa: E402
from ranker.runtime.star import block_lines, format_block, write_star  # noqa: E402


def write_data_star(path, n, n_classes, rng, chunk=200_000):
    labels = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV",
              "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup",
              "rlnGroupNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnClassNumber", "rlnNormCorrection", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
              "rlnNrOfSignificantSamples"]
    optics = format_block("optics", ["rlnOpticsGroupName", "rlnOpticsGroup", "rlnMicrographOriginalPixelSize",
                                     "rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast",
                                     "rlnImagePixelSize", "rlnImageSize", "rlnImageDimensionality"],
                          [["opticsGroup1", 1, 1.5, 300.0, 2.7, 0.1, 1.5, 128, 2]])
    # Zipf-like class populations, as real jobs have
    p = 1.0 / np.arange(1, n_classes + 1) ** 0.8
    p /= p.sum()

    def rows():  # drawn chunk by chunk, so that a million rows never sit in memory
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cls = rng.choice(n_classes, size=m, p=p) + 1
            d = rng.uniform(5000, 25000, m)
            for i, x in zip(range(m), rng.uniform(100, 3900, m)):
                mic = (start + i) // 300
                yield [f"{start + i + 1:06d}@Extract/job005/Movies/mic{mic:05d}.mrcs",
                       f"MotionCorr/job002/Movies/mic{mic:05d}.mrc", x, x * 0.7, d[i], d[i] + 211.3, 37.5, 0.0,
                       1.0, 0.0, 1, mic + 1, 0.0, 0.0, float((i * 37) % 360 - 180), 0.75, -1.5, int(cls[i]), 0.98,
                       8993.1, 0.71, 18]

    write_star(path, [optics, block_lines("particles", labels, rows())])
    return labels


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("--particles", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=200)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--angpix", type=float, default=1.5)
    ap.add_argument("--diameter", type=float, default=None)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    job = os.path.join(a.dir, "Class2D", "job001")
    os.makedirs(job, exist_ok=True)
    root = "Class2D/job001/run_it025"
    diameter = a.diameter or 0.7 * a.box * a.angpix
    from scipy import ndimage
    imgs = rng.normal(size=(a.classes, a.box, a.box)).astype(np.float32)
    imgs = ndimage.gaussian_filter(imgs, (0, a.box / 40, a.box / 40)).astype(np.float32)
    imgs *= circle_mask(a.box, diameter / a.angpix / 2)
    write_mrc(os.path.join(a.dir, root + "_classes.mrcs"), imgs, a.angpix, stack=True)
    write_data_star(os.path.join(a.dir, root + "_data.star"), a.particles, a.classes, rng)
    pdf = rng.dirichlet(np.ones(a.classes))
    model_general = format_block("model_general", ["rlnReferenceDimensionality", "rlnDataDimensionality",
                                                   "rlnOriginalImageSize", "rlnPixelSize", "rlnNrClasses",
                                                   "rlnNrGroups"], [[2, 2, a.box, a.angpix, a.classes, 1]], loop=False)
    model_classes = format_block(
        "model_classes", ["rlnReferenceImage", "rlnClassDistribution", "rlnAccuracyRotations",
                          "rlnAccuracyTranslationsAngst", "rlnEstimatedResolution", "rlnOverallFourierCompleteness",
                          "rlnClassPriorOffsetX", "rlnClassPriorOffsetY"],
        [[f"{k + 1:06d}@{root}_classes.mrcs", pdf[k], rng.uniform(1, 20), rng.uniform(0.5, 5), rng.uniform(6, 30),
          1.0, 0.0, 0.0] for k in range(a.classes)])
    # the per-class and per-group spectra RELION writes after model_classes (the job refuses a model.star
    # without them: it would be one cut short); flat SSNR, unused while rlnEstimatedResolution > 0
    shells = a.box // 2 + 1
    spectrum = [[i, i / a.box, a.box * a.angpix / i if i else 999.0, 1.0] for i in range(shells)]
    spectra = [format_block(f"model_class_{k + 1}", ["rlnSpectralIndex", "rlnResolution", "rlnAngstromResolution",
                                                     "rlnSsnrMap"], spectrum) for k in range(a.classes)]
    groups = format_block("model_groups", ["rlnGroupNumber", "rlnGroupName", "rlnGroupNrParticles",
                                           "rlnGroupScaleCorrection"], [[1, "group_1", a.particles, 1.0]])
    noise = format_block("model_group_1", ["rlnSpectralIndex", "rlnResolution", "rlnSigma2Noise"],
                         [row[:2] + [1e-4] for row in spectrum])
    write_star(os.path.join(a.dir, root + "_model.star"), [model_general, model_classes, *spectra, groups, noise])
    write_star(os.path.join(a.dir, root + "_optimiser.star"), [format_block(
        "optimiser_general", ["rlnOutputRootName", "rlnModelStarFile", "rlnExperimentalDataStarFile",
                              "rlnParticleDiameter", "rlnDoCorrectCtf", "rlnDoIgnoreCtfUntilFirstPeak"],
        [["Class2D/job001/run", f"{root}_model.star", f"{root}_data.star", diameter, 1, 0]], loop=False)])


if __name__ == "__main__":
    main()
