"""Evaluation: bits/dim over the variational bound; FID / KID / IS on a feature network.

    result = evaluation.bits_per_dim(trained, data.load_split("fashion_mnist", "test"),
                                     batch_size=64)

One module per job: ``bound`` (the variational bound on a split in bits/dim, exact or Monte
Carlo), ``scores`` (Frechet distance, KID, Inception Score), ``features`` (the feature-network
protocol), ``classifier`` (the project's small CNN, which suits MNIST-like data), ``inception``
(pytorch-fid's InceptionV3 for FIDs comparable with papers: ``inception_net`` the network,
``downloads`` and ``torch_state_dict`` its weights fetched and read without torch), ``reference``
(cached statistics of real images, pytorch-fid / TTUR stats files), ``fid`` (generated images
against them) and ``ode_bpd`` (bits/dim by the probability-flow ODE). The public names are
re-exported here.
"""

from ddpm_jax.evaluation import inception
from ddpm_jax.evaluation.bound import bits_per_dim, bound_on_split, sampled_variational_bound
from ddpm_jax.evaluation.classifier import (
    Classifier,
    load_classifier,
    save_classifier,
    train_classifier,
)
from ddpm_jax.evaluation.features import FeatureExtractor, FeatureFunction
from ddpm_jax.evaluation.fid import compare_features, fid_kid
from ddpm_jax.evaluation.ode_bpd import ode_bits_per_dim
from ddpm_jax.evaluation.reference import (
    ReferenceStats,
    load_reference_stats,
    reference_statistics,
    save_reference_stats,
    split_features,
)
from ddpm_jax.evaluation.scores import (
    feature_statistics,
    frechet_distance,
    inception_score,
    kernel_inception_distance,
)
