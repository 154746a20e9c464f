"""Labelled training projects for the class ranker, classified by real RELION 3.1.

Each *job* is one small RELION project whose ground truth is known:

1. a protein density map, from a coordinate file (PDB, mmCIF, PQR) or from a
   pseudo-atomic model of random shape (globular, multi-domain, elongated, ring,
   dumbbell, C_n oligomer, bent arm, disc);
2. good particles projected by ``relion_project --ctf --add_noise --white_noise``
   with preferred views, per-micrograph defocus and white noise set for a target SNR;
   or (spec ``noise_model: "real"``) clean projections plus coloured noise with the power
   spectrum of a real micrograph's background (``noise``, ``data/``), same SNR; optionally
   neighbouring particles entering the box (``crowd_frac``) and a smooth ice-thickness field
   per micrograph (``ice_gradient``);
3. junk made with numpy (same noise, same CTF metadata): ``noise`` (empty ice),
   ``ice`` (contamination blobs), ``edge`` (carbon / hole edges), ``aggregate``
   (2-4 overlapping particles), ``offcentre`` (particle shifted by 0.25-0.5 box),
   ``partial`` (projection of a fragment of the complex), ``blob`` (blurry, featureless
   particle-sized blobs and faint mis-centred blurred particles), ``patch`` (real junk cut
   from real micrographs, ``data/real_junk_patches.*``: ice balls, aggregates, crystalline
   ice, cracks);
4. ``Import/job001/particles.star`` (RELION 3.1 format, rows shuffled) and a real
   ``relion_refine`` 2D classification written to ``Class2D/job002/run``, run from
   the project root so that every path in the STAR files is relative to it (``--ctf``
   unless the spec says ``ctf_correct: false``);
5. ``truth.csv`` (per particle), ``class_truth.csv`` (per class, columns of
   shared/fixtures/class2d_sim/class_truth.csv plus ``n_partial``),
   ``classes_montage.png`` and ``corpus_job.json`` (every generation parameter);
6. clean-up: particle stacks and intermediate iterations are deleted; the final
   ``run_itNNN_{optimiser,model,data,sampling}.star`` and ``run_itNNN_classes.mrcs`` stay.

Units: lengths in Angstrom (A) unless a name ends in ``_px`` (pixels); angles in
degrees; defocus in A; voltage in kV; spherical aberration in mm; SNR is the
variance of the noise-free CTF-modulated projection inside the particle circle
divided by the variance of the (white or coloured) noise. The realism options and how far
the result is from real data: ``project.REALISM_KEYS``, ``python -m ranker.develop realism``.

Usage
-----
    python -m ranker.simulate structures DIR
        download Debian packages that ship real coordinate files (apt-get download +
        dpkg -x), keep the selected structures as DIR/NAME.npz + DIR/structures.json
    python -m ranker.simulate job OUTDIR [--pdb FILE | --shape ring] [--box 64 --angpix 3 ...]
        one project with explicit parameters (see ``job --help``)
    python -m ranker.simulate spec OUTDIR SPEC.json
        one project from a JSON spec (as written in corpus_job.json["spec"])
    python -m ranker.simulate many CORPUS --n 60 [--structures DIR] [--seed 1]
        jobs CORPUS/job0001 ... with varied parameters; restartable: finished jobs
        are skipped, a crashed job is removed and logged in CORPUS/failed/
    python -m ranker.simulate summary CORPUS
        progress: finished jobs, wall times, good / bad / mixed / empty classes
    python -m ranker.simulate compare RELION_CORPUS QUICK_CORPUS [--md OUT.md]
        feature distributions of good and junk classes, relion_refine vs quickclass

``job`` and ``many`` take ``--classifier quick``: step 4 then uses ``quickclass``, a fast
in-Python stand-in for relion_refine (seconds per job instead of minutes; NOT RELION, so its
classes are checked against RELION-classified jobs with ``compare`` before being trusted).

Modules, in the order the data flows: ``structures`` (coordinates: Debian packages, pseudo-atomic
models), ``optics`` (density map, CTF, views), ``noise`` (coloured noise of a real micrograph, ice
fields), ``project`` (one job: particles, junk, relion_refine),
``quickclass`` (the fast stand-in for relion_refine), ``truth`` (per-class truth, montage, clean-up),
``corpus`` (varied jobs, restartable), ``compare`` (quick vs RELION feature distributions), ``files``
(STAR loop reader, JSON, RELION version; STAR and MRC files go through ranker.runtime.star and
ranker.runtime.mrc), ``__main__`` (the command line).

Requires relion_project and relion_refine (RELION 3.1) on PATH, numpy, scipy,
mrcfile; gemmi only to read mmCIF files; matplotlib only for the montage.
"""
