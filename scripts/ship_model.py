"""Ships a trained run as a pretrained model in saved_models/<name>/ (tfvamp.model_cards).

    python scripts/ship_model.py --model_dir runs/frey --name frey_faces_hvae_vampprior \
        --retrain "python scripts/train.py --flagfile configs/frey.cfg"
"""
from absl import app, flags

from tfvamp import model_cards

FLAGS = flags.FLAGS
flags.DEFINE_string("model_dir", None, "The trained run (its best weights are shipped).", required=True)
flags.DEFINE_string("name", None, "The folder name under saved_models/.", required=True)
flags.DEFINE_string("retrain", None, "The command that re-trains it (written into the card).", required=True)
flags.DEFINE_integer("eval_samples", 1000, "Importance samples per test image for the card's number.", lower_bound=1)
flags.DEFINE_integer("card_images", 0, "The card's number over this many test images, evenly spread (0 = all).",
                     lower_bound=0)
flags.DEFINE_integer("seed", 0, "Seed of the card's importance samples and pictures.")
flags.DEFINE_string("trained_commit", None, "The tfvamp commit that trained the run (written into the card).")
flags.DEFINE_string("data_dir", None, "Where prepared datasets are cached.")
flags.DEFINE_string("manual_dir", None, "Where the original dataset files are (default: $TFVAMP_MANUAL_DIR).")


def main(argv):
    del argv
    card = model_cards.ship(FLAGS.model_dir, FLAGS.name, FLAGS.retrain, num_samples=FLAGS.eval_samples,
                            seed=FLAGS.seed, num_images=FLAGS.card_images, data_dir=FLAGS.data_dir,
                            manual_dir=FLAGS.manual_dir,
                            trained_commit=FLAGS.trained_commit)
    print(f"saved_models/{FLAGS.name}: {model_cards.describe(card['test'])}")


if __name__ == "__main__":
    app.run(main)
