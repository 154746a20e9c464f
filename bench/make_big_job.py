"""Make a synthetic RELION Class2D job of facility size for benchmarks.

    python bench/make_big_job.py DIR --particles 1000000 --classes 200 --box 128 --angpix 1.5

Writes DIR/Class2D/job001/run_it025_{optimiser,model,data}.star and run_it025_classes.mrcs
(project-relative paths, RELION 3.1 layout). The data.star rows look like a real Class2D
run (22 columns, RELION's number formatting); class images are smooth random blobs.
"""
import argparse
import os

import numpy as np


def write_data_star(path, n, n_classes, rng, chunk=200_000):
    labels = ["rlnImageName", "rlnMicrographName", "rlnCoordinateX", "rlnCoordinateY", "rlnDefocusU", "rlnDefocusV",
              "rlnDefocusAngle", "rlnCtfBfactor", "rlnCtfScalefactor", "rlnPhaseShift", "rlnOpticsGroup",
              "rlnGroupNumber", "rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi", "rlnOriginXAngst", "rlnOriginYAngst",
              "rlnClassNumber", "rlnNormCorrection", "rlnLogLikeliContribution", "rlnMaxValueProbDistribution",
              "rlnNrOfSignificantSamples"]
    with open(path, "w") as fh:
        fh.write("\n# version 30001\n\ndata_optics\n\nloop_ \n_rlnOpticsGroupName #1 \n_rlnOpticsGroup #2 \n"
                 "_rlnMicrographOriginalPixelSize #3 \n_rlnVoltage #4 \n_rlnSphericalAberration #5 \n"
                 "_rlnAmplitudeContrast #6 \n_rlnImagePixelSize #7 \n_rlnImageSize #8 \n_rlnImageDimensionality #9 \n"
                 "opticsGroup1            1     1.500000   300.000000     2.700000     0.100000     1.500000          128            2 \n \n\n"
                 "# version 30001\n\ndata_particles\n\nloop_ \n")
        fh.write("".join(f"_{l} #{i} \n" for i, l in enumerate(labels, 1)))
        # Zipf-like class populations, as real jobs have
        p = 1.0 / np.arange(1, n_classes + 1) ** 0.8
        p /= p.sum()
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            cls = rng.choice(n_classes, size=m, p=p) + 1
            d = rng.uniform(5000, 25000, m)
            rows = [f"{start + i + 1:06d}@Extract/job005/Movies/mic{(start + i) // 300:05d}.mrcs "
                    f"MotionCorr/job002/Movies/mic{(start + i) // 300:05d}.mrc {rng_x:12.6f} {rng_x * 0.7:12.6f} "
                    f"{d[i]:12.6f} {d[i] + 211.3:12.6f} {37.5:12.6f} {0:12.6f} {1:12.6f} {0:12.6f} {1:12d} "
                    f"{(start + i) // 300 + 1:12d} {0:12.6f} {0:12.6f} {((i * 37) % 360) - 180:12.6f} "
                    f"{0.75:12.6f} {-1.5:12.5f} {cls[i]:12d} {0.98:12.6f} {8993.1:12.6f} {0.71:12.6f} {18:12d} \n"
                    for i, rng_x in zip(range(m), rng.uniform(100, 3900, m))]
            fh.write("".join(rows))
        fh.write(" \n")
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
    import mrcfile
    from scipy import ndimage
    imgs = rng.normal(size=(a.classes, a.box, a.box)).astype(np.float32)
    imgs = ndimage.gaussian_filter(imgs, (0, a.box / 40, a.box / 40)).astype(np.float32)
    yy, xx = np.mgrid[:a.box, :a.box] - a.box // 2
    imgs *= (xx ** 2 + yy ** 2 < (diameter / a.angpix / 2) ** 2)
    mrcfile.write(os.path.join(a.dir, root + "_classes.mrcs"), imgs, overwrite=True)
    write_data_star(os.path.join(a.dir, root + "_data.star"), a.particles, a.classes, rng)
    pdf = rng.dirichlet(np.ones(a.classes))
    rows = "".join(f"{k + 1:06d}@{root}_classes.mrcs {pdf[k]:12.6f} {rng.uniform(1, 20):12.6f} "
                   f"{rng.uniform(0.5, 5):12.6f} {rng.uniform(6, 30):12.6f} {1.0:12.6f} {0:12.6f} {0:12.6f} \n"
                   for k in range(a.classes))
    with open(os.path.join(a.dir, root + "_model.star"), "w") as fh:
        fh.write(f"\n# version 30001\n\ndata_model_general\n\n_rlnReferenceDimensionality 2\n"
                 f"_rlnDataDimensionality 2\n_rlnOriginalImageSize {a.box}\n_rlnPixelSize {a.angpix:.6f}\n"
                 f"_rlnNrClasses {a.classes}\n_rlnNrGroups 1\n\n# version 30001\n\ndata_model_classes\n\nloop_ \n"
                 "_rlnReferenceImage #1 \n_rlnClassDistribution #2 \n_rlnAccuracyRotations #3 \n"
                 "_rlnAccuracyTranslationsAngst #4 \n_rlnEstimatedResolution #5 \n_rlnOverallFourierCompleteness #6 \n"
                 "_rlnClassPriorOffsetX #7 \n_rlnClassPriorOffsetY #8 \n" + rows + " \n")
    with open(os.path.join(a.dir, root + "_optimiser.star"), "w") as fh:
        fh.write(f"\n# version 30001\n\ndata_optimiser_general\n\n_rlnOutputRootName Class2D/job001/run\n"
                 f"_rlnModelStarFile {root}_model.star\n_rlnExperimentalDataStarFile {root}_data.star\n"
                 f"_rlnParticleDiameter {diameter:.6f}\n_rlnDoCorrectCtf 1\n_rlnDoIgnoreCtfUntilFirstPeak 0\n\n")


if __name__ == "__main__":
    main()
